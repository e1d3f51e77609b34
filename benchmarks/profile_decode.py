"""GPU: where one XL decode step spends its time (kernel table from torch.profiler, no CUDA graph).

    python benchmarks/profile_decode.py --batch 1 --out prof.txt
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="XL")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--gemv-rows", type=int, default=None, help="Engine(gemv_rows=...): matmuls as fused reductions up to this batch")
    ap.add_argument("--sdpa", action="store_true", help="eager attention instead of the fused Triton kernel")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from hrm_text.config import model_config
    from hrm_text.infer.engine import Engine, Request, SamplingParams
    from hrm_text.model.lm import HRMTextLM

    torch.manual_seed(0)
    model = HRMTextLM(model_config(args.preset), attn_backend="sdpa").to("cuda", torch.bfloat16).eval()
    eng = Engine(model, eoa_id=-1, max_batch=args.batch, max_len=400, cuda_graphs=False,
                 gemv_rows=args.gemv_rows, fused_attention=False if args.sdpa else None)
    prompts = [torch.randint(10, 60000, (256,)).tolist() for _ in range(args.batch)]
    eng.generate([Request(p, SamplingParams(max_tokens=4), i) for i, p in enumerate(prompts)])  # compile
    eng._pos.fill_(256)
    with torch.no_grad():
        for _ in range(3):
            eng._decode()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                eng._decode()
            torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total_us = sum(e.self_device_time_total for e in events) / 5
    n_kernels = sum(e.count for e in events) / 5
    summary = f"batch {args.batch}: {n_kernels:.0f} kernels per step, {total_us / 1000:.2f} ms of kernel time per step"
    print(summary)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(summary + "\n" + table)


if __name__ == "__main__":
    main()
