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

Two savings for a model that calls each block several times per step (HRM: each L block 6 times
and each H block twice; with K = 5, 3 and 2 of those calls are recorded for backward), both on by default on one GPU (`train.fp8_weight_cache`,
`train.fused_wgrad`):
- weight cache: `cache_weights(model)` quantizes every block weight once per micro-step (for the
  forward GEMM, and transposed for the input-gradient GEMM) instead of at every call;
  `drop_weight_cache(model)` releases it. One byte per element twice: 2 GB at XL.
- fused weight-gradient accumulation: the weight-gradient GEMM adds its float32 result straight
  into `weight.grad` (cuBLAS with beta = 1), as Megatron's gradient-accumulation fusion does,
  instead of returning a bf16 gradient that autograd casts and then sums call by call. Autograd's
  own accumulation (and its hooks) is bypassed for these weights, so it is for one process only:
  under FSDP the gradients must go through FSDP's reduce-scatter hooks.

The modules keep their class's parameters (`Float8Linear` is an `nn.Linear`), so state dicts,
checkpoints and exports are unchanged (the cache is a non-persistent buffer).
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from hrm_text.model.loss import matmul_accumulate

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


@functools.lru_cache(maxsize=None)
def _compiled_quantize_weight() -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    # one fused pass per weight and direction instead of about five eager ones; a block has four
    # weight shapes, so at most four small graphs
    return torch.compile(quantize_weight, dynamic=False)


# ---- fused weight-gradient accumulation ----------------------------------------------------


@torch.library.custom_op("hrm_text::accumulate_wgrad", mutates_args=())
def accumulate_wgrad(gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    """`w.grad += gy.T @ x` for the parameter w (a side effect on its `.grad`, made inside the
    backward pass). An opaque op, so that the compiled backward calls it with the parameter itself."""
    if not (w.is_leaf and w.requires_grad):
        raise RuntimeError("fused weight-gradient accumulation needs the parameter itself "
                           f"(got a non-leaf tensor of shape {tuple(w.shape)}); set train.fused_wgrad=false")
    w.grad = matmul_accumulate(w.grad, gy.t(), x, w.dtype)  # float32 master weights: float32 sums


@accumulate_wgrad.register_fake
def _(gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    return None


# it returns nothing and declares no mutation: without this the compiler would drop it as dead code
torch.fx.node.has_side_effect(torch.ops.hrm_text.accumulate_wgrad.default)


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
            if ctx.fuse_wgrad:  # type: ignore[attr-defined]
                torch.ops.hrm_text.accumulate_wgrad(gy, xb, w)  # straight into w.grad
            else:
                dw = (gy.t() @ xb).to(w.dtype)
        return (dx, dw, None, None, None) + (None,) * (len(ctx.needs_input_grad) - 5)  # type: ignore[attr-defined]


def float8_shape_ok(m: int, k: int, n: int) -> bool:
    """float8 GEMMs need every dimension a multiple of 16."""
    return m % 16 == 0 and k % 16 == 0 and n % 16 == 0


class Float8Linear(nn.Linear):
    """`nn.Linear` (no bias) whose matmuls run as `_Float8Matmul`; falls back to the plain linear
    for shapes float8 GEMMs do not take."""

    fast_accum: bool = True  # set per module by convert_to_float8
    save_fp8: bool = False
    fuse_wgrad: bool = False  # set by enable_fused_wgrad
    cache_on: bool = False  # set by enable_weight_cache: cache_weights quantizes this one
    wcache: torch.Tensor | None  # buffers set by cache_weights: wq, ws, wtq, wts (None: no cache)
    wcache_s: torch.Tensor | None
    wcache_t: torch.Tensor | None
    wcache_ts: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, k = x.shape[:-1], x.shape[-1]
        m = x.numel() // max(1, k)
        if self.bias is not None or not float8_shape_ok(m, k, self.out_features):
            return super().forward(x)
        cached = () if self.wcache is None else (self.wcache, self.wcache_s, self.wcache_t, self.wcache_ts)
        # fuse_wgrad only matters where the backward computes a weight gradient (it checks)
        y = _Float8Matmul.apply(x.reshape(m, k), self.weight, self.fast_accum, self.save_fp8, self.fuse_wgrad, *cached)
        return y.view(*lead, self.out_features)


_CACHE_NAMES = ("wcache", "wcache_s", "wcache_t", "wcache_ts")


def float8_modules(model: nn.Module) -> list[Float8Linear]:
    return [m for m in model.modules() if isinstance(m, Float8Linear)]


def convert_to_float8(model: nn.Module, skip: tuple[str, ...] = ("lm_head",), fast_accum: bool = True,
                      save_fp8: bool = False) -> int:
    """Turn every bias-free `nn.Linear` except those named in `skip` and LoRA's low-rank adapters
    (too narrow to gain) into a `Float8Linear` in place (the class changes, the parameters stay);
    returns how many. `fast_accum`: Hopper's reduced-precision accumulation in the forward GEMM;
    `save_fp8`: keep x for the weight gradient in float8 (recipe fused_lowmem)."""
    n = 0
    for name, mod in model.named_modules():
        parts = name.split(".")
        if any(p.startswith("lora_") for p in parts):
            continue
        if type(mod) is nn.Linear and mod.bias is None and parts[-1] not in skip:
            mod.__class__ = Float8Linear
            mod.fast_accum = fast_accum
            mod.save_fp8 = save_fp8
            for b in _CACHE_NAMES:  # non-persistent: never in a state dict or checkpoint
                mod.register_buffer(b, None, persistent=False)
            n += 1
    return n


def _set_on_float8(model: nn.Module, attr: str, on: bool) -> int:
    mods = float8_modules(model)
    for m in mods:
        setattr(m, attr, on)
    return len(mods)


def enable_fused_wgrad(model: nn.Module, on: bool = True) -> int:
    """Accumulate the float8 projections' weight gradients straight into `.grad` (one process only:
    autograd's accumulation and its hooks are bypassed). Returns how many modules."""
    return _set_on_float8(model, "fuse_wgrad", on)


def enable_weight_cache(model: nn.Module, on: bool = True) -> int:
    """Let `cache_weights` quantize these float8 projections once per micro-step. Returns how many."""
    return _set_on_float8(model, "cache_on", on)


@dataclass
class _Replay:
    """The quantization of all cached weights captured as one CUDA graph: refreshing the cache
    costs one launch instead of a compiled call per weight (about 0.1 ms of host time each, which
    at the start of a step leaves the GPU waiting)."""

    ptrs: tuple[int, ...]  # the weights' storage the graph reads; recaptured if any moves
    graph: torch.cuda.CUDAGraph
    outs: list[tuple[torch.Tensor, ...]]  # in the graph's memory pool, rewritten by each replay


_REPLAYS: "weakref.WeakKeyDictionary[nn.Module, _Replay]" = weakref.WeakKeyDictionary()


def _quantize_cuda(model: nn.Module, mods: list[Float8Linear]) -> list[tuple[torch.Tensor, ...]]:
    ptrs = tuple(m.weight.data_ptr() for m in mods)
    rep = _REPLAYS.get(model)
    if rep is None or rep.ptrs != ptrs:
        _REPLAYS.pop(model, None)  # free the old graph's pool first
        quant = _compiled_quantize_weight()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile and autotune before the capture, as CUDA graphs need
            for m in mods:
                quant(m.weight)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = [quant(m.weight) for m in mods]
        rep = _REPLAYS[model] = _Replay(ptrs, graph, outs)
    rep.graph.replay()
    return rep.outs


def cache_weights(model: nn.Module) -> int:
    """Quantize the weight of every float8 projection enabled by `enable_weight_cache` once for the
    coming forward and backward (HRM calls each block several times per step); returns how many.
    Call again after the weights change, and `drop_weight_cache` before anything else runs the
    model (evaluation, the EMA swap): a stale cache would compute with old weights. On CUDA the
    quantized copies live in a CUDA graph's memory pool for as long as the model does."""
    mods = [m for m in float8_modules(model) if m.cache_on]
    if not mods:
        return 0
    with torch.no_grad():
        if mods[0].weight.is_cuda:
            outs = _quantize_cuda(model, mods)
        else:
            outs = [quantize_weight(m.weight) for m in mods]
    for m, qs in zip(mods, outs):
        _set_cache(m, qs)
    return len(mods)


def drop_weight_cache(model: nn.Module) -> None:
    for m in float8_modules(model):
        _set_cache(m, (None,) * len(_CACHE_NAMES))


def _set_cache(m: Float8Linear, tensors: tuple[torch.Tensor | None, ...]) -> None:
    # straight into the registered buffers: nn.Module.__setattr__ re-registers each buffer (about
    # 3 us each, 1.7 ms per micro-step at XL for 512 of them, twice, at the step's start and end)
    m._buffers.update(zip(_CACHE_NAMES, tensors))
