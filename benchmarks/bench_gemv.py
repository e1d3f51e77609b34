"""Decode-size matmuls of one block: which way of calling them is fastest inside a CUDA graph?

Each decode block runs four projections on M = batch rows: gqkv (hidden -> 4*H*D), o_proj (H*D ->
hidden), gate_up (hidden -> 2*I), down (I -> hidden). At batch 1 they are weight-bandwidth bound;
this script replays 200 calls of each inside one CUDA graph (as the engine does), cycling through
enough weight copies that every call reads from HBM, and reports
microseconds per call and the implied weight bandwidth, for several formulations:

  linear       F.linear(x, W)                   (what the model calls; cuBLASLt)
  mv           torch.mv(W, x) per row            (M = 1 only)
  wx           (W @ x^T)^T                       (the transposed problem; different cuBLAS kernel)
  compiled     torch.compile(F.linear), default mode
  autotune     torch.compile(F.linear, mode="max-autotune-no-cudagraphs") (Triton templates vs cuBLAS)

    python benchmarks/bench_gemv.py --preset XL --batches 1,32 --out gemv.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F


def graph_time_us(fn: Callable[[], torch.Tensor], reps: int = 210) -> float:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        best = min(best, a.elapsed_time(b) * 1000 / reps)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="XL")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--no-autotune", action="store_true", help="skip max-autotune (minutes of tuning)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from hrm_text.config import model_config

    cfg = model_config(args.preset)
    d, inner, inter = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.intermediate_size
    shapes = {"gqkv": (d, 4 * inner), "o_proj": (inner, d), "gate_up": (d, 2 * inter), "down": (inter, d)}
    dev, dt = torch.device("cuda"), torch.bfloat16
    res: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "preset": args.preset, "rows": []}
    for M in [int(b) for b in args.batches.split(",")]:
        for name, (K, N) in shapes.items():
            # enough distinct weight copies (> 200 MB) that each call reads its weights from HBM, as
            # in the model, and not from the 50 MB L2 cache; calls cycle through them
            n_copies = max(2, -(-200_000_000 // (N * K * 2)))
            Ws = [torch.randn(N, K, device=dev, dtype=dt) / K**0.5 for _ in range(n_copies)]
            x = torch.randn(M, K, device=dev, dtype=dt)
            turn = [0]

            def nxt() -> torch.Tensor:
                turn[0] += 1
                return Ws[turn[0] % n_copies]

            lin = torch.compile(lambda a, w: F.linear(a, w), dynamic=False)
            ways: dict[str, Callable[[], torch.Tensor]] = {
                "linear": lambda: F.linear(x, nxt()), "wx": lambda: (nxt() @ x.t()).t(), "compiled": lambda: lin(x, nxt()),
            }
            if M == 1:
                ways["mv"] = lambda: torch.mv(nxt(), x[0])
            if not args.no_autotune:
                tuned = torch.compile(lambda a, w: F.linear(a, w), dynamic=False, mode="max-autotune-no-cudagraphs")
                ways["autotune"] = lambda: tuned(x, nxt())
            W = Ws[0]
            ref = F.linear(x, W).float()
            row = {"M": M, "proj": name, "K": K, "N": N, "weight_MB": N * K * 2 / 1e6}
            for way, fn in ways.items():
                turn[0] = -1  # the next call uses Ws[0]
                err = (fn().float() - ref).abs().max().item()
                us = graph_time_us(fn)
                row[way] = {"us": round(us, 2), "TB_s": round(N * K * 2 / us / 1e6, 2), "max_err": err}
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
