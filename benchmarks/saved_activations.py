"""Bytes the model saves for backward, per token per recorded layer call (CPU or GPU).

Runs `model.loss` (K recorded stack calls) of an XL-width model with few layers under
saved-tensor hooks and counts each saved storage once, leaving out the parameters and anything
without a token dimension. It checks the activation term of `hrm-text plan`'s memory estimate
(`train/plan.py: activation_bytes_per_token_per_layer`) against what the compiled block saves.

    python benchmarks/saved_activations.py --tokens 128 --compile --bf16     # about 4 min on 2 CPUs
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import make_rows  # noqa: E402  (the benchmark's packed rows)

from hrm_text.config import model_config  # noqa: E402
from hrm_text.data.batch import PackedBatch  # noqa: E402
from hrm_text.model.lm import HRMTextLM  # noqa: E402
from hrm_text.train.plan import activation_bytes_per_token_per_layer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="XL", help="width of this preset (default XL)")
    ap.add_argument("--layers", type=int, default=2, help="n_layers (2: one layer per stack)")
    ap.add_argument("--tokens", type=int, default=128, help="tokens in the packed row")
    ap.add_argument("--K", type=int, default=5, help="recorded stack calls")
    ap.add_argument("--compile", action="store_true", help="compile the blocks as training does")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast as training on a GPU")
    ap.add_argument("--attn-backend", default="sdpa", help="attention backend (flex on a GPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    cfg = model_config(args.preset, n_layers=args.layers, vocab_size=4096)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = HRMTextLM(cfg, attn_backend=args.attn_backend).to(dev)
    if args.compile:
        for blk in model.blocks():
            blk.compile()
    rows = make_rows(args.tokens, 1, 4096, 0)
    batch = PackedBatch(**{k: v for k, v in rows.items() if k in PackedBatch.__dataclass_fields__}).with_loss_index().to(dev)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[tuple[int, torch.dtype], int] = {}
    shapes: collections.Counter = collections.Counter()

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr in params or args.tokens not in t.shape or (ptr, t.dtype) in seen:
            return t
        seen[(ptr, t.dtype)] = t.untyped_storage().nbytes()
        shapes[(tuple(t.shape), str(t.dtype).replace("torch.", ""))] += 1
        return t

    for _ in range(2):  # the second pass runs the compiled graphs (the first may recompile)
        seen.clear()
        shapes.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
                out = model.loss(batch, bp_steps=args.K)
        out.loss_sum.backward()
    layer_calls = args.K * max(1, cfg.n_layers // 2)
    per = sum(seen.values()) / args.tokens / layer_calls
    print(f"{args.preset} width, {args.tokens} tokens, K={args.K}, compile={args.compile}, bf16={args.bf16}, "
          f"{args.attn_backend} on {dev}: {per:,.0f} bytes per token per recorded layer call "
          f"(plan's formula: {activation_bytes_per_token_per_layer(cfg, model.model.autocast_states):,.0f})")
    for (shape, dtype), n in sorted(shapes.items(), key=lambda kv: -kv[1]):
        print(f"  {n:4d} x {shape} {dtype}")


if __name__ == "__main__":
    main()
