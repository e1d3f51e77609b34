"""Evaluation during training: held-out exact-match (greedy, EMA weights) every `eval_every` steps."""

from __future__ import annotations

from typing import Callable

import torch

from hrm_text.config import Config
from hrm_text.model.lm import HRMTextLM


def make_eval_fn(cfg: Config, max_new_tokens: int = 32) -> Callable[[HRMTextLM, int], dict[str, float]]:
    """Exact-match on `data.heldout_jsonl` (a file, a folder of held-out JSONL files, or a built-in
    corpus folder), `train.eval_limit` rows per file. Returns {"exact_match": %, "<group>": %...}."""
    from hrm_text.data.tokenizer import TextTokenizer
    from hrm_text.eval.suites import builtin_items, run_suite
    from hrm_text.infer.textgen import make_engine, text_generate_fn

    assert cfg.data.heldout_jsonl
    items = builtin_items(cfg.data.heldout_jsonl, limit=cfg.train.eval_limit)
    tok_dir = cfg.data.tokenizer_dir
    tok = TextTokenizer.load(tok_dir) if tok_dir else None

    def eval_fn(model: HRMTextLM, step: int) -> dict[str, float]:
        nonlocal tok
        if tok is None:
            from hrm_text.data.loader import SampledData

            tok = TextTokenizer.load(SampledData(cfg.data.sampled_dir).metadata["tokenizer_dir"])
        model.eval()
        longest = max(len(tok.encode_prompt(it.instruction, it.condition)) for it in items)
        engine = make_engine(model, tok, max_batch=min(64, len(items)), max_len=min(model.cfg.max_seq_len, longest + max_new_tokens + 2))
        with torch.no_grad():
            res = run_suite(items, text_generate_fn(engine, tok, max_new_tokens), batch_size=256)
        out: dict[str, float] = {}
        for b in res.benchmarks.values():
            out["exact_match"] = b.score
            for g, metrics in b.groups.items():
                out[f"em_{g}"] = float(metrics.get(b.primary, next(iter(metrics.values()), 0.0)))
        return out

    return eval_fn
