"""GPU: forward+backward throughput of one model step (no optimizer), XL shape by default.

Reports tokens/s and MFU (paper FLOPs accounting, `hrm_text.model.flops`) for the attention
backends and with/without per-block torch.compile, at K = train.bp_max_steps (the steady state).

    python benchmarks/bench_model_step.py --preset XL --layers 32 --seq 8192 --out res.json
"""

from __future__ import annotations

import argparse
import json
import random

import torch
from cuda_timing import timed_steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="XL")
    ap.add_argument("--layers", type=int, default=None, help="override n_layers (total over H and L)")
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--variants", default="sdpa-eager,flex-eager,flex-compile")
    ap.add_argument("--peak", type=float, default=989e12, help="peak FLOP/s for MFU (H100 SXM dense bf16)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from hrm_text.config import TrainConfig, model_config
    from hrm_text.data.batch import pack_rows
    from hrm_text.model.flops import train_flops_per_token
    from hrm_text.model.lm import HRMTextLM

    dev = torch.device("cuda")
    rng = random.Random(0)
    rows, used = [], 0
    while True:  # realistic mix: prompts 50-1500 tokens, responses 1-1500
        p, r = rng.randint(50, 1500), rng.randint(1, 1500)
        if used + p + r > args.seq:
            break
        rows.append(([11] * p, [12] * r))
        used += p + r
    batch = pack_rows([rows], args.seq).to(dev)
    extra = {} if args.layers is None else {"n_layers": args.layers}
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "preset": args.preset, **extra,
               "seq": args.seq, "filled_tokens": used, "variants": {}}
    for variant in args.variants.split(","):
        backend, mode = variant.split("-")
        torch.manual_seed(0)
        cfg = model_config(args.preset, max_seq_len=args.seq, **extra)
        model = HRMTextLM(cfg, attn_backend=backend).to(dev)
        if mode == "compile":
            for blk in model.blocks():
                blk.compile()
        K = TrainConfig().final_bp_steps(cfg.arch)
        flops_tok = train_flops_per_token(cfg, K)

        def step(_i: int) -> float:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model.loss(batch, bp_steps=K)
            (out.loss_sum / out.num_tokens).backward()
            return out.loss_sum.item()

        first, times, _ = timed_steps(step, args.iters)
        times.sort()
        med = times[len(times) // 2]
        tps = used / med  # real (non-padding) tokens only
        results["variants"][variant] = {
            "first_step_s": round(first, 2),
            "median_step_s": round(med, 4),
            "tokens_per_s": round(tps, 1),
            "mfu_paper_flops": round(tps * flops_tok / args.peak, 4),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        }
        print(variant, results["variants"][variant], flush=True)
        del model
        torch.cuda.empty_cache()
    print(json.dumps(results, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
