"""`hrm-text quickstart`: the whole pipeline on the built-in offline corpus, in minutes, on any machine.

corpus (arithmetic, DeepMind mathematics, Sudoku) -> tokenizer (512 tokens) -> token arrays ->
stratified sample (arithmetic in full, the other sources capped) -> train the `tiny` HRM for a time
budget -> held-out arithmetic exact-match before and after (EMA weights) -> a few answers.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

QUICKSTART_RULES = {
    "context": 512,
    "seed": 0,
    "rules": [
        {"prefix": "arith", "repeat": 1},
        {"prefix": "dm_math", "max_per_file": 20},
        {"prefix": "sudoku", "max_per_file": 50, "long_context": "drop"},
    ],
}


def _echo(msg: str) -> None:
    print(msg, flush=True)


def _exact_match(model: torch.nn.Module, tok, files: dict[str, Path], limit: int) -> tuple[dict[str, float], list]:
    from hrm_text.eval.runner import builtin_items
    from hrm_text.eval.during_training import exact_match, group_scores

    res = exact_match(model, tok, builtin_items(dict(files), limit=limit), max_new_tokens=12)
    return group_scores(res), res.items


def run_quickstart(out: Path, minutes: float = 6.0, device: str | None = None, seed: int = 0) -> int:
    from hrm_text.config import load_config
    from hrm_text.data.builtin import builtin_heldout_files, write_builtin_corpus
    from hrm_text.data.sample import parse_rules, sample_corpus
    from hrm_text.data.tokenize import tokenize_sources
    from hrm_text.data.tokenizer import train_tokenizer
    from hrm_text.model.lm import HRMTextLM
    from hrm_text.train.trainer import train

    t_start = time.perf_counter()
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev == "cpu":
        # tiny matrices: one thread avoids synchronisation stalls between cores (2x faster here)
        torch.set_num_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    corpus, tok_dir, tokd, sampled, run = out / "corpus", out / "tokenizer", out / "tokens", out / "sampled", out / "run"

    _echo(f"[1/6] built-in corpus -> {corpus}")
    if not (corpus / "builtin.json").is_file():
        write_builtin_corpus(corpus, size="quickstart", seed=seed)
    _echo(f"[2/6] tokenizer (512 tokens) -> {tok_dir}")
    if not (tok_dir / "tokenizer.json").is_file():
        train_tokenizer([corpus / "train"], vocab_size=512, out_dir=tok_dir)
    _echo(f"[3/6] tokenize -> {tokd}")
    tokenize_sources([corpus / "train"], tok_dir, tokd, workers=1)
    _echo(f"[4/6] stratified sample -> {sampled}")
    sample_corpus(tokd, sampled, parse_rules(QUICKSTART_RULES), epochs=4)

    heldout = builtin_heldout_files(corpus)
    arith = {k: heldout[k] for k in ("arith_test", "arith_long") if k in heldout}
    from hrm_text.data.tokenizer import TextTokenizer

    tok = TextTokenizer.load(tok_dir)
    overrides = [
        "model.preset=tiny",
        f"data.sampled_dir={sampled}",
        f"data.tokenizer_dir={tok_dir}",
        "data.tokens_per_rank=512",
        "data.num_workers=1",
        f"data.seed={seed}",
        f"train.out_dir={run}",
        "train.global_batch_tokens=2048",
        "train.lr=2e-3",
        "train.lr_warmup_steps=30",
        "train.weight_decay=0.1",
        "train.ema_decay=0.999",
        "train.ema_warmup=true",
        "train.ckpt_every=0",
        "train.log_every=10",
        f"train.seed={seed}",
        f"train.compile={'true' if dev == 'cuda' else 'false'}",
        "train.tensorboard=false",
    ]
    cfg = load_config(None, overrides)
    cfg.model.vocab_size = tok.vocab_size
    torch.manual_seed(seed)
    base = HRMTextLM(cfg.model).eval()
    before, _ = _exact_match(base, tok, arith, limit=200)
    _echo("held-out exact-match before training: " + ", ".join(f"{k} {v:.1f}%" for k, v in before.items()))

    # size the run to the time budget from a measured step (the LR/K schedules need a step count)
    budget_s = max(30.0, minutes * 60.0)
    steps = _calibrate_steps(cfg, budget_s, dev)
    cfg.train.max_steps = steps
    _echo(f"[5/6] train tiny HRM ({sum(p.numel() for p in base.parameters()) / 1e6:.1f}M params) on {dev} for {steps} steps (~{budget_s / 60:.0f} min)")
    result = train(cfg, resume=None)

    _echo("[6/6] evaluate (EMA weights)")
    from hrm_text.checkpoint.loading import load_model

    trained = load_model(result.final_checkpoint, device="cpu").model
    after, items = _exact_match(trained, tok, arith, limit=200)
    _echo("held-out exact-match after training:  " + ", ".join(f"{k} {v:.1f}%" for k, v in after.items()))
    for it in [i for i in items if i.group == "arith_test"][:5]:
        _echo(f"  {it.id}: model says {it.generation!r}, score {it.scores}")
    gain = after.get("arith_test", 0.0) - before.get("arith_test", 0.0)
    summary = {"before": before, "after": after, "gain_arith_test": gain, "steps": result.steps,
               "minutes_total": (time.perf_counter() - t_start) / 60, "checkpoint": str(result.final_checkpoint)}
    (out / "quickstart.json").write_text(json.dumps(summary, indent=2) + "\n")
    _echo(f"done in {summary['minutes_total']:.1f} min; arithmetic exact-match +{gain:.1f} points. "
          f"Next: hrm-text chat {result.final_checkpoint}")
    return 0


def _calibrate_steps(cfg, budget_s: float, dev: str) -> int:
    """Time a few training micro-steps of the real model to turn minutes into steps."""
    from hrm_text.data.loader import PackedLoader
    from hrm_text.model.lm import HRMTextLM

    model = HRMTextLM(cfg.model, attn_backend=cfg.train.attn_backend).to(dev)
    K = cfg.train.final_bp_steps(cfg.model.arch)  # the steady-state step the run will mostly take
    loader = PackedLoader(cfg.data.sampled_dir, cfg.data.tokens_per_rank, prefetch=False)
    accum = max(1, cfg.train.global_batch_tokens // cfg.data.tokens_per_rank)
    batches = [next(loader).to(dev) for _ in range(accum)]
    # warm up on every micro-batch first: the first calls of a fresh process run ~1.5x slower
    # (allocator, kernels), and timing them made the run stop after ~60% of its budget
    for b in batches:
        model.loss(b, bp_steps=K).loss_sum.backward()
    if dev == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in batches:
        model.loss(b, bp_steps=K).loss_sum.backward()
    if dev == "cuda":
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - t0) * 1.1  # optimizer, EMA, loader, logging
    loader.close()
    return max(20, int(budget_s / step_s))
