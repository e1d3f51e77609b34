"""Evaluation during training (greedy, EMA weights) every `eval.every` steps:

- held-out loss on `eval.heldout_dir` (a `hrm-text data sample` output), `eval.heldout_limit` rows
  of `data.tokens_per_rank` tokens, response tokens only, full recurrence;
- held-out exact match on `eval.heldout_jsonl` (the built-in suite), `eval.heldout_limit` rows per file;
- optionally a `--limit`-ed paper suite from local files: `eval.paper_data_dir` with
  `eval.paper_limit` items per benchmark, answers capped at `eval.max_new_tokens` so a CoT benchmark
  cannot stall training. Those numbers track progress; they are not the paper protocol's numbers.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from hrm_text.config import Config
from hrm_text.model.lm import HRMTextLM


def make_eval_fn(cfg: Config, max_new_tokens: int = 32) -> Callable[[HRMTextLM, int], dict[str, float]]:
    """Returns eval_fn(model, step) -> {"exact_match": %, "em_<group>": %, "paper_<benchmark>": %...}.

    Items are built once, here, so that a missing file fails at start-up rather than at the first
    evaluation hours into a run."""
    from hrm_text.data.tokenizer import TextTokenizer
    from hrm_text.eval.runner import builtin_items, paper_items, run_suite

    use_paper = bool(cfg.eval.paper_data_dir) and cfg.eval.paper_limit > 0
    assert cfg.eval.heldout_jsonl or use_paper or cfg.eval.heldout_dir
    heldout_rows = _heldout_rows(cfg) if cfg.eval.heldout_dir else []
    items = builtin_items(cfg.eval.heldout_jsonl, limit=cfg.eval.heldout_limit) if cfg.eval.heldout_jsonl else []
    paper = (paper_items(cfg.eval.paper_data_dir, limit=cfg.eval.paper_limit, source="local")
             if use_paper else [])
    tok_dir = cfg.data.tokenizer_dir
    tok = TextTokenizer.load(tok_dir) if tok_dir else None

    def eval_fn(model: HRMTextLM, step: int) -> dict[str, float]:
        nonlocal tok
        if tok is None:
            from hrm_text.data.loader import SampledData

            tok = TextTokenizer.load(SampledData(cfg.data.sampled_dir).metadata["tokenizer_dir"])
        model.eval()
        out: dict[str, float] = {}
        if heldout_rows:
            dev = next(model.parameters()).device
            loss, n = 0.0, 0
            with torch.no_grad():
                for b in heldout_rows:
                    b = b.to(dev)
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                        r = model.loss(b)
                    loss += float(r.loss_sum)
                    n += int(r.num_tokens)
            out["heldout_loss"] = loss / max(n, 1)
        if items:
            res = exact_match(model, tok, items, max_new_tokens)
            for b in res.benchmarks.values():
                out["exact_match"] = b.score
            out.update({f"em_{g}": v for g, v in group_scores(res).items()})
        if paper:
            from hrm_text.eval.generation import SuiteGenerator

            bs = max(1, cfg.eval.batch_size)
            gen = SuiteGenerator(model, tok, paper, bs, context=min(cfg.eval.max_context, 4096),
                                 max_new_tokens=cfg.eval.max_new_tokens)
            with torch.no_grad():
                pres = run_suite(paper, gen, batch_size=bs)
            for name, b in pres.benchmarks.items():
                out[f"paper_{name}"] = b.score
        return out

    return eval_fn


def _heldout_rows(cfg: Config) -> list:
    """The first `eval.heldout_limit` packed rows of the held-out sampled data (same rows every time)."""
    from hrm_text.data.loader import PackedLoader

    loader = PackedLoader(cfg.eval.heldout_dir, cfg.data.tokens_per_rank, prefetch=False, epochs=1)
    rows = []
    for b in loader:
        rows.append(b)
        if len(rows) >= max(1, cfg.eval.heldout_limit):
            break
    loader.close()
    return rows


def exact_match(model: HRMTextLM, tok: Any, items: list, max_new_tokens: int = 32, prefix_lm: bool = True,
                max_batch: int = 64, **engine_options: Any) -> Any:
    """Greedy exact-match of held-out items (built-in suite) with an engine sized to the prompts;
    `prefix_lm=False` reads prompts causally (a model trained with a causal objective)."""
    from hrm_text.eval.runner import run_suite
    from hrm_text.infer.textgen import make_engine, text_generate_fn

    longest = max(len(tok.encode_prompt(it.instruction, it.condition)) for it in items)
    engine = make_engine(model, tok, max_batch=min(max_batch, len(items)),
                         max_len=min(model.cfg.max_seq_len, longest + max_new_tokens + 2), prefix_lm=prefix_lm,
                         **engine_options)
    with torch.no_grad():
        return run_suite(items, text_generate_fn(engine, tok, max_new_tokens), batch_size=256)


def group_scores(result: Any) -> dict[str, float]:
    """{group (held-out file or module): headline score} of a SuiteResult."""
    return {g: float(m.get(b.primary, next(iter(m.values()), 0.0)))
            for b in result.benchmarks.values() for g, m in b.groups.items()}
