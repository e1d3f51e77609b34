"""Plan a `hrm-text study` grid from measured step times: one call times a full training step of every
distinct model of the grid (forward + backward + Adam-atan2 + EMA, as the trainer runs it), eager
and optionally compiled, then predicts the grid's training time and the budgets that fit a target.

    # GPU (one call, ~1-3 min): results in $OUT/study_steptime.json
    PYTHONPATH=src python benchmarks/study_steptime.py src/hrm_text/configs/study_hrm_vs_transformer.yaml \\
        --compile --target-minutes 12 --out $OUT/study_steptime.json
    # CPU smoke (tiny sizes, seconds)
    PYTHONPATH=src python benchmarks/study_steptime.py src/hrm_text/configs/study_hrm_vs_transformer.yaml --tiny

Batches are synthetic packed rows with the study corpus' length mix (short arithmetic, medium
mathematics and text, a few ~200-token Sudoku rows), so no data is needed. Steps per run come from
the grid's budgets exactly as `hrm-text study` derives them (budget / FLOPs per token averaged over
the K warm-up / real tokens per step); the row fill of the synthetic rows stands in for the real plan's.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch


def study_like_row(T: int, vocab: int, rng: random.Random) -> tuple[list, int]:
    """One packed row of (prompt, response) examples with the study corpus' length mix."""
    row, used = [], 0
    while True:
        r = rng.random()
        if r < 0.70:  # padded arithmetic
            p, q = rng.randint(10, 14), rng.randint(5, 7)
        elif r < 0.85:  # DeepMind mathematics
            p, q = rng.randint(15, 120), rng.randint(2, 30)
        elif r < 0.97:  # docstring questions
            p, q = rng.randint(12, 30), rng.randint(8, 50)
        else:  # sudoku
            p, q = rng.randint(95, 100), rng.randint(85, 92)
        if used + p + q > T:
            if T - used < 20 or len(row) > 4096:
                break
            continue
        row.append(([rng.randrange(8, vocab) for _ in range(p)], [rng.randrange(8, vocab) for _ in range(q)]))
        used += p + q
    return row, used


def time_model(cfg: Any, train_cfg: Any, tokens: int, steps: int, compile_blocks: bool, device: torch.device,
               objective: str) -> dict[str, Any]:
    from hrm_text.data.batch import apply_objective, pack_rows
    from hrm_text.model.flops import run_flops, train_flops_per_token
    from hrm_text.model.lm import HRMTextLM
    from hrm_text.train.optim import AdamAtan2, ModelEMA

    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.device(device):
        model = HRMTextLM(cfg, attn_backend=train_cfg.attn_backend)
    if compile_blocks:
        for blk in model.blocks():
            blk.compile()
    opt = AdamAtan2(model.parameters(), lr=1e-4)
    ema = ModelEMA(model, decay=0.999)
    rng = random.Random(0)
    rows = [study_like_row(tokens, cfg.vocab_size, rng) for _ in range(4)]
    batches = [(apply_objective(pack_rows([r], tokens), objective).to(device), used) for r, used in rows]
    K = train_cfg.final_bp_steps(cfg.arch)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def step(i: int) -> None:
        b, _ = batches[i % len(batches)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            out = model.loss(b, bp_steps=K)
        (out.loss_sum / out.num_tokens.clamp_min(1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model)

    t0 = time.perf_counter()
    step(0)
    sync()
    first = time.perf_counter() - t0
    # K changes during the warm-up (2 -> 5): a compiled block sees each grad mode once here too
    for k in range(train_cfg.bp_min_steps if cfg.arch in ("hrm", "trm") else K, K + 1):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            model.loss(batches[0][0], bp_steps=k).loss_sum.backward()
        opt.zero_grad(set_to_none=True)
    sync()
    warm = time.perf_counter() - t0
    times = []
    for i in range(steps):
        sync()
        t = time.perf_counter()
        step(i + 1)
        sync()
        times.append(time.perf_counter() - t)
    med = sorted(times)[len(times) // 2]
    real = sum(u for _, u in rows) / len(rows)
    fpt_k = train_flops_per_token(cfg, K)
    return {"median_step_s": med, "first_step_s": first, "warmup_s": warm, "real_tokens_per_step": real,
            "fill": real / tokens, "tokens_per_s": real / med, "flops_per_token_avg": run_flops(cfg, 1.0, train_cfg),
            "flops_per_token_K": fpt_k, "model_flops_per_s": real * fpt_k / med,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grid")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per model")
    ap.add_argument("--compile", action="store_true", help="also time with per-block torch.compile")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke: shrink every model and row")
    ap.add_argument("--target-minutes", type=float, default=12.0, help="device minutes the whole grid should take")
    ap.add_argument("--overhead-s", type=float, default=10.0, help="per-run seconds besides training (build, eval, checkpoints)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from hrm_text.config import load_config
    from hrm_text.eval.study import load_grid
    from hrm_text.train.metrics import device_peak_flops

    grid = load_grid(args.grid)
    for name in ("recompile_limit", "cache_size_limit"):  # several models in one process each compile
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    peak, peak_src = device_peak_flops(device)
    vocab = int(grid.data.get("vocab_size", 4096))
    models: dict[str, dict[str, Any]] = {}
    plan = []
    for spec in grid.runs:
        over = []
        for sec in ("model", "data", "train"):
            vals = {**grid.base.get(sec, {}), **spec.sections.get(sec, {})}
            over += [f"{sec}.{k}={json.dumps(v)}" for k, v in vals.items()]
        cfg = load_config(None, over)
        cfg.model.vocab_size = vocab
        if args.tiny:
            cfg.model.hidden_size, cfg.model.num_heads, cfg.model.head_dim, cfg.model.mlp_multiple = 64, 2, 32, 64
            cfg.model.n_layers = min(cfg.model.n_layers, 4)
            cfg.data.tokens_per_rank = cfg.train.global_batch_tokens = 512
            cfg.model.max_seq_len = 512
        key = f"{cfg.model.arch}-{cfg.model.n_layers}L"
        if key not in models:
            print(f"timing {key} ...", flush=True)
            m = {"arch": cfg.model.arch, "n_layers": cfg.model.n_layers,
                 "eager": time_model(cfg.model, cfg.train, cfg.data.tokens_per_rank, 2 if args.tiny else args.steps, False, device, "prefix_lm")}
            if args.compile and device.type == "cuda":
                m["compiled"] = time_model(cfg.model, cfg.train, cfg.data.tokens_per_rank, args.steps, True, device, "prefix_lm")
            for mode in ("eager", "compiled"):
                if mode in m:
                    m[mode]["mfu"] = m[mode]["model_flops_per_s"] / peak
            models[key] = m
        m = models[key]
        accum = max(1, round(cfg.train.global_batch_tokens / cfg.data.tokens_per_rank))
        real_per_step = m["eager"]["fill"] * cfg.data.tokens_per_rank * accum
        steps = max(1, round(spec.budget / (m["eager"]["flops_per_token_avg"] * real_per_step)))
        row = {"run_id": spec.run_id, "model": key, "budget": spec.budget, "steps": steps}
        for mode in ("eager", "compiled"):
            if mode in m:
                row[f"train_s_{mode}"] = steps * accum * m[mode]["median_step_s"]
                # compile cost is paid again by every run (a new model in the same process recompiles)
                row[f"train_s_{mode}"] += m[mode]["warmup_s"] - m[mode]["median_step_s"] if mode == "compiled" else 0.0
        plan.append(row)
    total: dict[str, float] = {}
    for mode in ("eager", "compiled"):
        if all(f"train_s_{mode}" in r for r in plan):
            total[mode] = sum(r[f"train_s_{mode}"] for r in plan) + args.overhead_s * len(plan)
    best = min(total, key=total.get)
    target = args.target_minutes * 60
    train_part = total[best] - args.overhead_s * len(plan)
    scale = max(0.0, (target - args.overhead_s * len(plan)) / train_part) if train_part > 0 else float("nan")
    res = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "peak_flops": peak, "peak_source": peak_src, "tiny": args.tiny,
        "models": models, "runs": plan, "predicted_grid_s": total, "best_mode": best,
        "target_s": target, "budget_scale_to_fit_target": scale,
        "suggested_budgets": [float(f"{b * scale:.2g}") for b in grid.budgets] if math.isfinite(scale) else None,
    }
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=2))
    for r in plan:
        print(f"  {r['run_id']:<40} {r['steps']:>6} steps  " + "  ".join(f"{k[8:]} {v:7.1f} s" for k, v in r.items() if k.startswith("train_s_")))
    print(f"predicted grid: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in total.items())
          + f"; budgets x{scale:.2f} fit {args.target_minutes:g} min ({best})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
