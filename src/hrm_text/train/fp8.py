"""Float8 training of the block projections, with the casts where the compiler can fuse them.

    n = convert_to_float8(model)      # the block projections; the head stays bf16

Recipe (`train.fp8_recipe=fused`): each projection `y = x @ W.T` runs its forward GEMM and its
input-gradient GEMM in float8 e4m3 with row-wise scales, and its weight-gradient GEMM in bf16:
- forward: x is scaled per token (amax over the input features), W per output feature;
- backward: dy is scaled per token (amax over the output features), W.T per input feature;
  dW = dy.T @ x in bf16 from the bf16 copy of x saved in the forward.
Each scale is an amax over a row that the neighbouring kernel already reads (the RMSNorm before
gqkv and gate_up, the sigmoid gate before o_proj, SwiGLU before down), so under `torch.compile`
the amax and the cast fuse into that kernel instead of costing passes of their own. Keeping the
weight gradient in bf16 avoids the column-wise casts of x and dy over the token dimension, which
cost more than their GEMM saves at these widths (docs/PERFORMANCE.md). torchao's recipes
(`train.fp8_recipe=rowwise` or `tensorwise`) stay available for comparison.

Variants: `fused_lowmem` (the default of `train.fp8=true`) saves the float8 x and its row scales
for the weight gradient instead of the bf16 x: half the memory of the projections' saved inputs,
and the weight gradient then sees x rounded to float8 (as torchao's rowwise recipe does),
dequantized to bf16. It is what fits the paper recipe's 12,288-token rows on an 80 GB card
without recomputation (docs/PERFORMANCE.md). `fused_precise` turns off Hopper's fast accumulation
in the forward GEMM (same speed).

On one process the weight cache and the fused weight-gradient accumulation of
train/projections.py apply (`train.fp8_weight_cache`, `train.fused_wgrad`, both on by default): the
cache holds each block weight quantized both ways (for the forward GEMM, and transposed for the
input-gradient GEMM), one byte per element twice: 2 GB at XL.

The modules keep their class's parameters (`Float8Linear` is an `nn.Linear`), so state dicts,
checkpoints and exports are unchanged (the cache is a non-persistent buffer).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from hrm_text.train.projections import CachedLinear, cached_modules, swap_projections, weight_grad

# Our recipes (train.fp8_recipe) as convert_to_float8's switches; torchao's are handled in train/step.py.
FUSED_RECIPES: dict[str, dict[str, bool]] = {
    "fused": {"fast_accum": True, "save_fp8": False},
    "fused_precise": {"fast_accum": False, "save_fp8": False},
    "fused_lowmem": {"fast_accum": True, "save_fp8": True},
}

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (q [M, K] float8 e4m3, s [M, 1] float32) with x ~= q * s, one scale per row."""
    xf = x.float()
    s = xf.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / E4M3_MAX
    return (xf / s).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), s


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [N, K] -> (wq, ws) scaled per output feature for the forward GEMM, and (wtq [K, N]
    row-major, wts) scaled per input feature for the input-gradient GEMM."""
    return (*quantize_rows(w), *quantize_rows(w.t().contiguous()))


# ---- the float8 projection ----------------------------------------------------------------------


class _Float8Matmul(torch.autograd.Function):
    """x [M, K] (any float dtype), w [N, K] -> x @ w.T in bf16; float8 forward and dgrad GEMMs.
    `wcache`: quantize_weight(w) of this micro-step, or empty (quantize here)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, w: torch.Tensor,  # type: ignore[override]
                fast_accum: bool, save_fp8: bool, fuse_wgrad: bool, *wcache: torch.Tensor) -> torch.Tensor:
        xq, xs = quantize_rows(x.contiguous())
        wq, ws = (wcache[0], wcache[1]) if wcache else quantize_rows(w)
        wt = wcache[2:] if wcache else ()
        ctx.fuse_wgrad = fuse_wgrad  # type: ignore[attr-defined]
        ctx.n_wt = len(wt)  # type: ignore[attr-defined]
        if save_fp8:  # 1 byte per element for backward instead of 2
            ctx.save_for_backward(*wt, xq, xs, w)
        else:
            ctx.save_for_backward(*wt, x.to(torch.bfloat16), w)
        # row-major A, column-major B (wq.t()); scales [M, 1] and [1, N]. Hopper's fast accumulation
        # (fewer bits in the running sum) as torchao's forward GEMM does; recipe fused_precise turns
        # it off. The input-gradient GEMM always accumulates precisely.
        return torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws.t(), out_dtype=torch.bfloat16,
                                use_fast_accum=fast_accum)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        saved = ctx.saved_tensors  # type: ignore[attr-defined]
        n_wt = ctx.n_wt  # type: ignore[attr-defined]
        wt, saved = saved[:n_wt], saved[n_wt:]
        w = saved[-1]
        gy = gy.to(torch.bfloat16).contiguous()
        dx = dw = None
        if ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            gq, gs = quantize_rows(gy)
            # [K, N] row-major, one scale per input feature
            wtq, wts = wt if wt else quantize_rows(w.t().contiguous())
            dx = torch._scaled_mm(gq, wtq.t(), scale_a=gs, scale_b=wts.t(), out_dtype=torch.bfloat16)
        if ctx.needs_input_grad[1]:  # type: ignore[attr-defined]  # a frozen base weight (LoRA) needs none
            # (xq, xs, w) under save_fp8: dequantize x for the bf16 GEMM; else (x in bf16, w)
            xb = (saved[0].float() * saved[1]).to(torch.bfloat16) if len(saved) == 3 else saved[0]
            dw = weight_grad(gy, xb, w, ctx.fuse_wgrad)  # type: ignore[attr-defined]
        return (dx, dw, None, None, None) + (None,) * (len(ctx.needs_input_grad) - 5)  # type: ignore[attr-defined]


def float8_shape_ok(m: int, k: int, n: int) -> bool:
    """float8 GEMMs need every dimension a multiple of 16."""
    return m % 16 == 0 and k % 16 == 0 and n % 16 == 0


class Float8Linear(CachedLinear):
    """`nn.Linear` (no bias) whose matmuls run as `_Float8Matmul`; falls back to the plain linear
    for shapes float8 GEMMs do not take. Its cache: quantize_weight(w) of this micro-step."""

    CACHE_NAMES = ("wcache", "wcache_s", "wcache_t", "wcache_ts")
    fast_accum: bool = True  # set per module by convert_to_float8
    save_fp8: bool = False

    @staticmethod
    def convert(w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return quantize_weight(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, k = x.shape[:-1], x.shape[-1]
        m = x.numel() // max(1, k)
        if self.bias is not None or not float8_shape_ok(m, k, self.out_features):
            return super().forward(x)
        # fuse_wgrad only matters where the backward computes a weight gradient (it checks)
        y = _Float8Matmul.apply(x.reshape(m, k), self.weight, self.fast_accum, self.save_fp8, self.fuse_wgrad,
                                *self.cached())
        return y.view(*lead, self.out_features)


def float8_modules(model: nn.Module) -> list[Float8Linear]:
    return [m for m in cached_modules(model) if isinstance(m, Float8Linear)]


def convert_to_float8(model: nn.Module, skip: tuple[str, ...] = ("lm_head",), fast_accum: bool = True,
                      save_fp8: bool = False) -> int:
    """Turn every bias-free `nn.Linear` except those named in `skip` and LoRA's low-rank adapters
    (too narrow to gain) into a `Float8Linear` in place (the class changes, the parameters stay);
    returns how many. `fast_accum`: Hopper's reduced-precision accumulation in the forward GEMM;
    `save_fp8`: keep x for the weight gradient in float8 (recipe fused_lowmem)."""
    n = swap_projections(model, Float8Linear, skip)
    for m in float8_modules(model):
        m.fast_accum = fast_accum
        m.save_fp8 = save_fp8
    return n
