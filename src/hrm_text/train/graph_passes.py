"""Rewrites of the compiled training blocks' graphs (inductor post-grad passes), for speed only:
each computes what the graph it replaces computes.

`ResidualIntoGemm`: a block ends with `x + down_proj(h)`. Compiled, that is a GEMM writing its
bf16 product, then an element-wise kernel reading the float32 residual and the product and
writing their float32 sum: at XL with 12,288-token rows, 128 such adds per step (9 ms of 576 on
an H100). The pass lets the GEMM add the residual in its epilogue instead (`addmm`, cuBLAS with
beta = 1, float32 output; our op `residual_mm`): one kernel, and the product is summed in float32
before any rounding.
Only where the sum is the graph's output (the block's return value): a sum that feeds a norm is
already fused into the norm's kernel, and an epilogue would only add traffic there.

    options = {"post_grad_custom_post_pass": ResidualIntoGemm()}   # torch.compile(..., options=)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch._guards import detect_fake_mode
from torch._inductor.custom_graph_pass import CustomGraphPass

aten = torch.ops.aten
_RESHAPES = (aten.reshape.default, aten.view.default, aten._unsafe_view.default)


@torch.library.custom_op("hrm_text::residual_mm", mutates_args=())
def residual_mm(r: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`r + a @ b` in r's dtype from one GEMM (beta = 1): a float32 r with bf16 a and b takes the
    float32 product, never rounded to bf16. An opaque op, so the compiler keeps it one kernel
    (torch 2.11 also has no working shape function for `aten.addmm.dtype`)."""
    if a.dtype == r.dtype:
        return torch.addmm(r, a, b)
    out = r.new_empty((a.shape[0], b.shape[1]))
    # the `out=` overload: the one the fused weight-gradient accumulation runs on the GPU
    return torch.addmm(r, a, b, out_dtype=r.dtype, out=out)


@residual_mm.register_fake
def _(r: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return r.new_empty((a.shape[0], b.shape[1]))


def _val(n: Any) -> Any:
    return n.meta.get("val") if isinstance(n, fx.Node) else None


def _product(n: Any) -> fx.Node | None:
    """The mm node when n is `reshape(mm(a, b))` and neither has another user."""
    if not (isinstance(n, fx.Node) and n.op == "call_function" and n.target in _RESHAPES and len(n.users) == 1):
        return None
    mm = n.args[0]
    if not (isinstance(mm, fx.Node) and mm.op == "call_function" and mm.target is aten.mm.default and len(mm.users) == 1):
        return None
    return mm


def residual_into_gemm(graph: fx.Graph) -> int:
    """Rewrite every returned `r + reshape(mm(a, b))` as `reshape(residual_mm(reshape(r), a, b))`;
    returns how many. A float32 r with a bf16 product needs a float32 GEMM output (CUDA only)."""
    n_done = 0
    for add in list(graph.nodes):
        if add.op != "call_function" or add.target is not aten.add.Tensor or add.kwargs or len(add.args) != 2:
            continue
        if not add.users or any(u.op != "output" for u in add.users):
            continue
        for r, other in (add.args, add.args[::-1]):
            mm = _product(other)
            mv, rv, out = _val(mm), _val(r), _val(add)
            if mv is None or rv is None or out is None or mv.dim() != 2:
                continue
            if tuple(rv.shape) != tuple(out.shape) or rv.dtype != out.dtype:
                continue  # r broadcast, or promoted to another dtype by the add
            if not all(isinstance(d, int) for d in (*mv.shape, *out.shape)):
                continue  # symbolic sizes (a dynamic-shape graph): left as it is
            if rv.dtype != mv.dtype and not (rv.dtype == torch.float32 and mv.dtype in (torch.bfloat16, torch.float16) and mv.is_cuda):
                continue  # a float32 output from bf16 inputs: CUDA's GEMMs only
            target = torch.ops.hrm_text.residual_mm.default
            fake_mode = detect_fake_mode([rv, mv])
            with graph.inserting_before(add):
                r2 = graph.call_function(aten.reshape.default, (r, list(mv.shape)))
                fused = graph.call_function(target, (r2, *mm.args))
                back = graph.call_function(aten.reshape.default, (fused, list(out.shape)))
            with fake_mode:  # the lowering reads each node's example value
                r2.meta["val"] = aten.reshape.default(rv, list(mv.shape))
                fused.meta["val"] = target(r2.meta["val"], *[_val(a) for a in mm.args])
                back.meta["val"] = aten.reshape.default(fused.meta["val"], list(out.shape))
            add.replace_all_uses_with(back)
            graph.erase_node(add)
            graph.erase_node(other)
            graph.erase_node(mm)
            n_done += 1
            break
    return n_done


class ResidualIntoGemm(CustomGraphPass):
    """`residual_into_gemm` as an inductor post-grad pass (its uuid keys inductor's cache)."""

    def __call__(self, graph: fx.Graph) -> None:
        residual_into_gemm(graph)

    def uuid(self) -> bytes:
        return hashlib.sha256(Path(__file__).read_bytes()).digest()
