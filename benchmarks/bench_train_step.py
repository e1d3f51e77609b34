"""GPU: full training-step throughput (forward + backward + Adam-atan2 + EMA), the trainer's pieces.

Uses synthetic packed rows with a realistic length mix, so it needs no tokenizer or dataset; the
same model, optimizer, EMA, autocast and per-block compile as `hrm_text.train.trainer`.

    python benchmarks/bench_train_step.py --preset XL --tokens 12288 --accum 1 --steps 8 --out res.json
"""

from __future__ import annotations

import argparse
import json
import random

import torch
from cuda_timing import timed_steps


def synthetic_batch(T: int, vocab: int, seed: int):
    from hrm_text.data.batch import pack_rows

    rng = random.Random(seed)
    row, used = [], 0
    while True:
        p, r = rng.randint(30, 1200), rng.randint(2, 1200)
        if used + p + r > T:
            break
        row.append(([rng.randrange(8, vocab) for _ in range(p)], [rng.randrange(8, vocab) for _ in range(r)]))
        used += p + r
    return pack_rows([row], T), used


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="XL")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=12288, help="tokens per micro-step (one packed row)")
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from hrm_text.config import TrainConfig, model_config
    from hrm_text.model.flops import train_flops_per_token
    from hrm_text.model.lm import HRMTextLM
    from hrm_text.train.metrics import device_peak_flops
    from hrm_text.train.optim import AdamAtan2, ModelEMA

    dev = torch.device("cuda")
    extra = {} if args.layers is None else {"n_layers": args.layers}
    cfg = model_config(args.preset, max_seq_len=max(4096, args.tokens), **extra)
    torch.manual_seed(0)
    with torch.device(dev):
        model = HRMTextLM(cfg)
    if not args.no_compile:
        for blk in model.blocks():
            blk.compile()
    opt = AdamAtan2(model.parameters(), lr=2.2e-4)
    ema = ModelEMA(model, decay=0.9999)
    batches = [synthetic_batch(args.tokens, cfg.vocab_size, s) for s in range(args.accum * 2)]
    K = TrainConfig().final_bp_steps(cfg.arch)  # the steady state after the K warm-up
    peak, peak_src = device_peak_flops(dev)

    def step(i: int) -> tuple[float, int]:
        real = 0
        loss_sum = torch.zeros((), device=dev)
        for m in range(args.accum):
            b, used = batches[(i * args.accum + m) % len(batches)]
            b = b.to(dev, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model.loss(b, bp_steps=K)
            (out.loss_sum / out.num_tokens).backward()
            loss_sum += out.loss_sum.detach() / out.num_tokens
            real += used
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model)
        return loss_sum.item(), real

    first, times, outs = timed_steps(step, args.steps)
    losses, reals = [o[0] for o in outs], [o[1] for o in outs]
    med = sorted(times)[len(times) // 2]
    tps = sum(reals) / sum(times)
    res = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "preset": args.preset, **extra,
        "tokens_per_microstep": args.tokens, "accum": args.accum, "K": K, "compile": not args.no_compile,
        "first_step_s": round(first, 2), "median_step_s": round(med, 4),
        "real_tokens_per_s": round(tps, 1),
        "mfu_paper_flops": round(tps * train_flops_per_token(cfg, K) / peak, 4),
        "mfu_with_head": round(tps * train_flops_per_token(cfg, K, include_head=True) / peak, 4),
        "peak": peak, "peak_source": peak_src,
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "losses": [round(x, 4) for x in losses],
    }
    print(json.dumps(res, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
