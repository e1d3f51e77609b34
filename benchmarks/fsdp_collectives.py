"""CPU (gloo) or GPU: how many FSDP2 collectives one HRM training step issues, per kind.

HRM calls every block several times per step (2 H calls, 6 L calls; K of them recorded for
backward). If FSDP2 all-gathers and reduce-scatters once per *call* rather than once per *step*,
a small model on several GPUs spends its step in communication: the suspect of the 2-GPU slowdown
(issue 16). This counts the collectives by the profiler's FSDP labels over one step on 2 processes,
with the trainer's own wrapping (`train/distributed.py: apply_fsdp2`) and step (`train/step.py`).

    python benchmarks/fsdp_collectives.py --preset tiny --out /tmp/fsdp_collectives.json   # CPU, 2 gloo processes
    python benchmarks/fsdp_collectives.py --reshard-after-forward false
    python benchmarks/fsdp_collectives.py --keep-gathered

Counts are per process. Structure only: on gloo the times say nothing about NCCL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from hrm_text.config import TrainConfig, model_config  # noqa: E402
from hrm_text.data.batch import pack_rows  # noqa: E402
from hrm_text.model.lm import HRMTextLM  # noqa: E402
from hrm_text.train.distributed import apply_fsdp2, reshard_all  # noqa: E402
from hrm_text.train.step import forward_backward  # noqa: E402

LABELS = ("FSDP::all_gather", "FSDP::post_backward_reduce", "FSDP::pre_backward", "FSDP::post_backward")


def _worker(rank: int, world: int, args: argparse.Namespace, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    mcfg = model_config(args.preset, vocab_size=512)
    model = HRMTextLM(mcfg, attn_backend="sdpa")
    apply_fsdp2(model, model.blocks(), mp_dtype=None, reshard_after_forward=args.reshard_after_forward,
                keep_gathered=args.keep_gathered)
    g = torch.Generator().manual_seed(rank)
    rows = [[(torch.randint(8, 512, (20,), generator=g).tolist(), torch.randint(8, 512, (12,), generator=g).tolist())
             for _ in range(args.tokens // 32)]]
    batch = pack_rows(rows, args.tokens).with_loss_index()
    forward_backward(model, batch, args.K, 1.0, bf16=False)  # warm-up: lazy init of FSDP state
    reshard_all(model)  # as the trainer does before each optimizer step (keep_gathered)
    model.zero_grad(set_to_none=True)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        forward_backward(model, batch, args.K, 1.0, bf16=False)
    counts = Counter(e.name for e in prof.events() if e.name.startswith("FSDP::"))
    if rank == 0:
        n_blocks = len(model.blocks())
        sched = model.model.schedule
        report = {
            "preset": args.preset, "K": args.K, "world": world, "blocks": n_blocks,
            "stack_calls_per_step": len(sched.calls), "reshard_after_forward": args.reshard_after_forward,
            "keep_gathered": args.keep_gathered,
            "fsdp_events_per_step": dict(sorted(counts.items())),
        }
        Path(out).write_text(json.dumps(report, indent=1))
        print(json.dumps(report, indent=1))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--K", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--reshard-after-forward", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    ap.add_argument("--keep-gathered", action="store_true", help="train.fsdp_keep_gathered")
    ap.add_argument("--port", type=int, default=29541)
    ap.add_argument("--out", default="fsdp_collectives.json")
    args = ap.parse_args()
    TrainConfig()  # the trainer's defaults import cleanly (fails early on a broken install)
    mp.spawn(_worker, args=(2, args, args.port, args.out), nprocs=2, join=True)


if __name__ == "__main__":
    main()
