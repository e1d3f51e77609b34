"""How the block projections train on one GPU: a weight cache per micro-step and weight gradients
added inside the GEMM. Shared by the float8 projections (train/fp8.py) and the bf16 ones here.

HRM calls each L block 6 times and each H block twice per step (with K = 5, 3 and 2 of those calls
are recorded for backward). A plain `nn.Linear` under bf16 autocast therefore casts its float32
master weight to bf16 at every call, forward and backward (208 casts of every block weight per
XL step), and autograd sums the weight gradients call by call: a bf16 product, a cast to float32,
an add. Two savings, each a switch on the swapped modules:
- weight cache: `cache_weights(model)` converts every enabled block weight once per micro-step
  (bf16 here; float8, both ways, in train/fp8.py); `drop_weight_cache(model)` releases it. On
  CUDA the conversions of all weights are one CUDA graph replay. Costs one converted copy of the
  block weights (2 bytes per parameter in bf16: 2 GB at XL).
- fused weight-gradient accumulation: the weight-gradient GEMM adds its float32 result straight
  into `weight.grad` (cuBLAS with beta = 1), as Megatron's gradient-accumulation fusion does.
  Autograd's own accumulation (and its hooks) is bypassed for these weights, so both are for one
  process only: under FSDP2 the gradients must go through its reduce-scatter hooks, and its
  gathered weights are not the parameters the cache reads. Inside activation checkpointing
  (`train.recompute_calls`) the recomputation hands backward a detached stand-in that shares the
  parameter's storage; the op finds the parameter by that storage (`_owner`), and refuses any
  tensor it cannot resolve rather than lose its gradient.

    n = convert_to_bf16_cached(model)   # block projections; the head and LoRA adapters stay
    enable_weight_cache(model); enable_fused_wgrad(model)
    cache_weights(model); loss.backward(); drop_weight_cache(model)   # train/step.py does this

The modules keep their class's parameters (a subclass of `nn.Linear`), so state dicts,
checkpoints and exports are unchanged (the cache is a non-persistent buffer). Without a cache
(evaluation, generation) they compute as `nn.Linear` does.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from hrm_text.model.loss import matmul_accumulate


# ---- fused weight-gradient accumulation ----------------------------------------------------


@torch.library.custom_op("hrm_text::accumulate_wgrad", mutates_args=())
def accumulate_wgrad(gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    """`w.grad += gy.T @ x` for the parameter w (a side effect on its `.grad`, made inside the
    backward pass). An opaque op, so that the compiled backward calls it with the parameter itself."""
    p = _owner(w)
    if p is None:
        raise RuntimeError("fused weight-gradient accumulation needs the parameter itself (got a "
                           f"{type(w).__name__} of shape {tuple(w.shape)} that is no registered parameter's "
                           "storage; its gradient would be lost); set train.fused_wgrad=false")
    p.grad = matmul_accumulate(p.grad, gy.t(), x, p.dtype)  # float32 master weights: float32 sums


@accumulate_wgrad.register_fake
def _(gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    return None


# it returns nothing and declares no mutation: without this the compiler would drop it as dead code
torch.fx.node.has_side_effect(torch.ops.hrm_text.accumulate_wgrad.default)

# The parameters the op may add into, by storage address. A saved-tensor hook (activation
# checkpointing: train.recompute_calls) hands backward a new tensor object standing for the
# parameter, detached but on the same storage; a .grad set on that object would be lost.
_OWNERS: "weakref.WeakValueDictionary[int, nn.Parameter]" = weakref.WeakValueDictionary()


def _register_owners(mods: "list[CachedLinear]") -> None:
    for m in mods:
        if m.fuse_wgrad:
            _OWNERS[m.weight.data_ptr()] = m.weight


def _owner(w: torch.Tensor) -> nn.Parameter | None:
    """The parameter `w` is, or stands for (same storage, shape and dtype); None if none is known."""
    if isinstance(w, nn.Parameter):
        return w if w.requires_grad else None
    p = _OWNERS.get(w.data_ptr())
    if p is None or not p.requires_grad or (p.shape, p.dtype, p.stride()) != (w.shape, w.dtype, w.stride()):
        return None
    return p if p.data_ptr() == w.data_ptr() else None  # the parameter may have moved since


def weight_grad(gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, fuse: bool) -> torch.Tensor | None:
    """The weight gradient gy.T @ x for autograd to accumulate, or None after adding it into
    w.grad inside the GEMM (`fuse`)."""
    if fuse:
        torch.ops.hrm_text.accumulate_wgrad(gy, x, w)
        return None
    return (gy.t() @ x).to(w.dtype)


# ---- projections with a per-micro-step weight cache -----------------------------------------------


class CachedLinear(nn.Linear):
    """Base of the swapped block projections: the two switches and the cache buffers. Subclasses
    name their cache buffers (`CACHE_NAMES`) and give the conversion that fills them (`convert`)."""

    CACHE_NAMES: ClassVar[tuple[str, ...]] = ()
    fuse_wgrad: bool = False  # set by enable_fused_wgrad
    cache_on: bool = False  # set by enable_weight_cache: cache_weights fills this one's buffers

    @staticmethod
    def convert(w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    @classmethod
    def swap(cls, mod: nn.Linear) -> None:
        """Turn `mod` into this class in place (the parameters stay), with empty cache buffers."""
        mod.__class__ = cls
        for b in cls.CACHE_NAMES:  # non-persistent: never in a state dict or checkpoint
            mod.register_buffer(b, None, persistent=False)

    def cached(self) -> tuple[torch.Tensor, ...]:
        """This micro-step's converted weight, or () when none is cached."""
        if getattr(self, self.CACHE_NAMES[0]) is None:
            return ()
        return tuple(getattr(self, b) for b in self.CACHE_NAMES)


def swap_projections(model: nn.Module, cls: type[CachedLinear], skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Turn every bias-free `nn.Linear` except those named in `skip` and LoRA's low-rank adapters
    (too narrow to gain) into `cls` in place; returns how many."""
    n = 0
    for name, mod in model.named_modules():
        parts = name.split(".")
        if any(p.startswith("lora_") for p in parts):
            continue
        if type(mod) is nn.Linear and mod.bias is None and parts[-1] not in skip:
            cls.swap(mod)
            n += 1
    return n


def cached_modules(model: nn.Module) -> list[CachedLinear]:
    return [m for m in model.modules() if isinstance(m, CachedLinear)]


def _set_on_all(model: nn.Module, attr: str, on: bool) -> int:
    mods = cached_modules(model)
    for m in mods:
        setattr(m, attr, on)
    return len(mods)


def enable_fused_wgrad(model: nn.Module, on: bool = True) -> int:
    """Accumulate the swapped projections' weight gradients straight into `.grad` (one process
    only: autograd's accumulation and its hooks are bypassed). Returns how many modules."""
    n = _set_on_all(model, "fuse_wgrad", on)
    _register_owners(cached_modules(model))
    return n


def enable_weight_cache(model: nn.Module, on: bool = True) -> int:
    """Let `cache_weights` convert these projections' weights once per micro-step. Returns how many."""
    return _set_on_all(model, "cache_on", on)


@functools.lru_cache(maxsize=None)
def _compiled_convert(cls: type[CachedLinear]) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    # one fused pass per weight instead of several eager ones; a block has four weight shapes,
    # so at most four small graphs per class
    return torch.compile(cls.convert, dynamic=False)


@dataclass
class _Replay:
    """The conversion of all cached weights captured as one CUDA graph: refreshing the cache
    costs one launch instead of a compiled call per weight (about 0.1 ms of host time each, which
    at the start of a step leaves the GPU waiting)."""

    ptrs: tuple[int, ...]  # the weights' storage the graph reads; recaptured if any moves
    graph: torch.cuda.CUDAGraph
    outs: list[tuple[torch.Tensor, ...]]  # in the graph's memory pool, rewritten by each replay


_REPLAYS: "weakref.WeakKeyDictionary[nn.Module, _Replay]" = weakref.WeakKeyDictionary()


def _convert_cuda(model: nn.Module, mods: list[CachedLinear]) -> list[tuple[torch.Tensor, ...]]:
    ptrs = tuple(m.weight.data_ptr() for m in mods)
    rep = _REPLAYS.get(model)
    if rep is None or rep.ptrs != ptrs:
        _REPLAYS.pop(model, None)  # free the old graph's pool first
        _register_owners(mods)  # the parameters moved since enable_fused_wgrad (or first use)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile and autotune before the capture, as CUDA graphs need
            for m in mods:
                _compiled_convert(type(m))(m.weight)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = [_compiled_convert(type(m))(m.weight) for m in mods]
        rep = _REPLAYS[model] = _Replay(ptrs, graph, outs)
    rep.graph.replay()
    return rep.outs


def cache_weights(model: nn.Module) -> int:
    """Convert the weight of every projection enabled by `enable_weight_cache` once for the coming
    forward and backward (HRM calls each block several times per step); returns how many. Call
    again after the weights change, and `drop_weight_cache` before anything else runs the model
    (evaluation, the EMA swap): a stale cache would compute with old weights. On CUDA the
    converted copies live in a CUDA graph's memory pool for as long as the model does."""
    mods = [m for m in cached_modules(model) if m.cache_on]
    if not mods:
        return 0
    with torch.no_grad():
        if mods[0].weight.is_cuda:
            outs = _convert_cuda(model, mods)
        else:
            _register_owners(mods)  # the parameters may have moved since enable_fused_wgrad
            outs = [m.convert(m.weight) for m in mods]
    for m, qs in zip(mods, outs):
        _set_cache(m, qs)
    return len(mods)


def drop_weight_cache(model: nn.Module) -> None:
    for m in cached_modules(model):
        _set_cache(m, (None,) * len(m.CACHE_NAMES))


def _set_cache(m: CachedLinear, tensors: tuple[torch.Tensor | None, ...]) -> None:
    # straight into the registered buffers: nn.Module.__setattr__ re-registers each buffer (about
    # 3 us each, 1.7 ms per micro-step at XL for 512 of them, twice, at the step's start and end)
    m._buffers.update(zip(m.CACHE_NAMES, tensors))


# ---- the bf16 projection ----------------------------------------------------------------------------


class _Bf16Matmul(torch.autograd.Function):
    """x [M, K] (any float dtype), w [N, K] float32, wb = w in bf16 (this micro-step's cache) ->
    x @ wb.T in bf16; the weight gradient in float32, added into w.grad inside the GEMM (`fuse`)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, w: torch.Tensor,  # type: ignore[override]
                fuse_wgrad: bool, wb: torch.Tensor) -> torch.Tensor:
        xb = x.to(torch.bfloat16)
        ctx.fuse_wgrad = fuse_wgrad  # type: ignore[attr-defined]
        ctx.save_for_backward(xb, wb, w)  # wb is the cache: saving it costs no memory
        return xb @ wb.t()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        xb, wb, w = ctx.saved_tensors  # type: ignore[attr-defined]
        gy = gy.to(torch.bfloat16)
        dx = gy @ wb if ctx.needs_input_grad[0] else None  # type: ignore[attr-defined]
        dw = None
        if ctx.needs_input_grad[1]:  # type: ignore[attr-defined]  # a frozen base weight (LoRA) needs none
            dw = weight_grad(gy, xb, w, ctx.fuse_wgrad)  # type: ignore[attr-defined]
        return dx, dw, None, None


class Bf16Linear(CachedLinear):
    """`nn.Linear` (no bias, float32 master weight) that, while a bf16 copy of its weight is cached
    for the micro-step, runs its GEMMs from that copy (`_Bf16Matmul`); otherwise plain `nn.Linear`."""

    CACHE_NAMES = ("wcache",)

    @staticmethod
    def convert(w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (w.to(torch.bfloat16),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cached = self.cached()
        if not cached:
            return F.linear(x, self.weight, self.bias)
        lead, k = x.shape[:-1], x.shape[-1]
        y = _Bf16Matmul.apply(x.reshape(-1, k), self.weight, self.fuse_wgrad, cached[0])
        return y.view(*lead, self.out_features)


def convert_to_bf16_cached(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Turn the block projections into `Bf16Linear` in place (the head and LoRA adapters stay);
    returns how many."""
    return swap_projections(model, Bf16Linear, skip)
