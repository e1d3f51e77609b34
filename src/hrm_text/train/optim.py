"""Adam-atan2 and the weight EMA (docs/ARCHITECTURE.md#optimiser-and-schedules).

Adam-atan2 replaces Adam's `m / (sqrt(v) + eps)` with `atan2(m, sqrt(v))`. The update is bounded
(|atan2| <= pi/2) and scale invariant without an epsilon, so there is no epsilon to tune and no
blow-up when `v` is tiny (e.g. rarely seen embedding rows). The step, exactly as in
docs/ARCHITECTURE.md#optimiser-and-schedules:

    p   *= 1 - lr * wd                                  # decoupled weight decay, first
    m    = lerp(m, g, 1 - b1)
    v    = b2 * v + (1 - b2) * g^2
    p   -= lr / bc1 * atan2(m, sqrt(v) / sqrt(bc2))     # bc_i = 1 - b_i^t

Only element-wise torch ops are used, so the same code runs on plain tensors and on the DTensor
shards FSDP2 hands to the optimizer (each rank updates its own shard; no communication needed).
State is kept in float32 (or float64 for float64 params, which the tests use) whatever the
parameter dtype, so bf16 parameters would still accumulate moments in full precision.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from hrm_text.checkpoint.store import clean_param_name


def _state_dtype(p: torch.Tensor) -> torch.dtype:
    """Moments in at least float32: bf16/fp16 moments lose the small g^2 terms entirely."""
    return torch.float64 if p.dtype == torch.float64 else torch.float32


class AdamAtan2(torch.optim.Optimizer):
    """Adam with `atan2` in place of the epsilon-guarded division, decoupled weight decay.

    `foreach=True` batches the element-wise ops over all tensors of one device/dtype with the
    `torch._foreach_*` kernels (far fewer kernel launches on GPU); it computes the same operations in
    the same order as the per-tensor path (there is no `_foreach_atan2`, so that one op runs per
    tensor). `foreach=None` picks foreach on CUDA and the per-tensor path elsewhere.
    `fused=True` (default on CUDA when Triton imports) runs one Triton kernel per plain CUDA tensor
    (train/optim_kernels.py): one read and one write of the state instead of about ten passes;
    DTensor shards and non-contiguous tensors keep the foreach path.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 2.2e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.1,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"learning rate must be >= 0 (got {lr})")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1) (got {betas})")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0 (got {weight_decay})")
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    def _init_state(self, p: torch.Tensor) -> dict[str, Any]:
        state = self.state[p]
        if len(state) == 0:
            dt = _state_dtype(p)
            # `step` is a CPU tensor (like torch.optim.Adam) so DCP saves and reshards it with the rest.
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, dtype=dt, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=dt, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._update()
        return loss

    @torch.no_grad()
    def step_with_ema(self, ema: ModelEMA, model: nn.Module) -> None:
        """`step()` then `ema.update(model)`, with the same results. Where the fused kernel updates a
        parameter it also folds the parameter into the EMA in that pass (one read of the weights
        saved per step); `ema.fold` then averages only the rest. Like a direct call of a
        fused kernel, it runs no optimizer step hooks (none are registered here)."""
        shadows, params = ema.pairs(model)  # one walk of the model per step
        done = self._update(dict(zip(map(id, params), shadows)), 1.0 - ema.current_decay())
        ema.fold(shadows, params, skip=done)

    def _update(self, shadows: dict[int, torch.Tensor] | None = None, ema_weight: float = 0.0) -> set[int]:
        """The step itself; returns the ids of the parameters whose EMA shadow it also updated."""
        done: set[int] = set()
        for group in self.param_groups:
            lr = float(group["lr"])
            b1, b2 = group["betas"]
            wd = float(group["weight_decay"])
            # Bucket by (device, param dtype, state dtype, step) so each bucket shares bias corrections.
            buckets: dict[tuple[Any, ...], list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamAtan2 does not support sparse gradients")
                state = self._init_state(p)
                state["step"] += 1
                key = (p.device, p.dtype, state["exp_avg"].dtype, int(state["step"].item()))
                buckets.setdefault(key, []).append(p)
            for (device, pdtype, sdtype, step), params in buckets.items():
                bc1 = 1.0 - b1**step
                bc2 = 1.0 - b2**step
                use_foreach = group["foreach"]
                if use_foreach is None:
                    use_foreach = device.type == "cuda"
                exp_avgs = [self.state[p]["exp_avg"] for p in params]
                exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
                kw = dict(lr=lr, b1=b1, b2=b2, wd=wd, bc1=bc1, bc2=bc2)
                kernels = _fused_kernels(group.get("fused"), device)
                if kernels is not None:
                    ok = [kernels.supported(p, m) for p, m in zip(params, exp_avgs)]
                    fused = [i for i, o in enumerate(ok) if o]
                    fp = [params[i] for i in fused]
                    fs = [shadows.get(id(p)) for p in fp] if shadows else [None] * len(fp)
                    fs = [x if kernels.shadow_supported(p, x) else None for p, x in zip(fp, fs)]
                    kernels.adam_atan2_step(fp, [exp_avgs[i] for i in fused], [exp_avg_sqs[i] for i in fused],
                                            shadows=fs, ema_weight=ema_weight, **kw)
                    done.update(id(p) for p, x in zip(fp, fs) if x is not None)
                    rest = [i for i, o in enumerate(ok) if not o]
                    params, exp_avgs, exp_avg_sqs = ([x[i] for i in rest] for x in (params, exp_avgs, exp_avg_sqs))
                if params:
                    fn = _step_foreach if use_foreach else _step_single
                    fn(params, exp_avgs, exp_avg_sqs, **kw)
        return done


def _fused_kernels(fused: bool | None, device: torch.device) -> Any:
    """The Triton kernels module when the fused path applies, else None."""
    if fused is False or device.type != "cuda":
        if fused and device.type != "cuda":
            raise RuntimeError("AdamAtan2(fused=True) needs CUDA tensors")
        return None
    try:
        from hrm_text.train import optim_kernels  # lazy: needs Triton, which CPU torch builds lack
    except ImportError:
        if fused:
            raise
        return None
    return optim_kernels


def _step_single(
    params: list[torch.Tensor], exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor],
    *, lr: float, b1: float, b2: float, wd: float, bc1: float, bc2: float,
) -> None:
    """Reference per-tensor update; every op is element-wise (DTensor-safe)."""
    step_size = lr / bc1
    sqrt_bc2 = math.sqrt(bc2)
    for p, m, v in zip(params, exp_avgs, exp_avg_sqs):
        # Work on a state-precision view of p so bf16 params still get fp32 arithmetic.
        pw = p if p.dtype == m.dtype else p.to(m.dtype)
        g = p.grad if p.grad.dtype == m.dtype else p.grad.to(m.dtype)
        if wd != 0.0:
            pw.mul_(1.0 - lr * wd)
        m.lerp_(g, 1.0 - b1)
        v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
        denom = v.sqrt().div_(sqrt_bc2)
        pw.add_(torch.atan2(m, denom), alpha=-step_size)
        if pw is not p:
            p.copy_(pw)


def _step_foreach(
    params: list[torch.Tensor], exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor],
    *, lr: float, b1: float, b2: float, wd: float, bc1: float, bc2: float,
) -> None:
    """Multi-tensor version of `_step_single`: same ops, same order, batched launches."""
    step_size = lr / bc1
    sqrt_bc2 = math.sqrt(bc2)
    cast = params[0].dtype != exp_avgs[0].dtype
    pw = [p.to(exp_avgs[0].dtype) for p in params] if cast else list(params)
    grads = [p.grad.to(exp_avgs[0].dtype) if p.grad.dtype != exp_avgs[0].dtype else p.grad for p in params]
    if wd != 0.0:
        torch._foreach_mul_(pw, 1.0 - lr * wd)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - b1)
    torch._foreach_mul_(exp_avg_sqs, b2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - b2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, sqrt_bc2)
    updates = [torch.atan2(m, d) for m, d in zip(exp_avgs, denoms)]
    torch._foreach_add_(pw, updates, alpha=-step_size)
    if cast:
        torch._foreach_copy_(params, pw)


class ModelEMA:
    """Exponential moving average of a model's parameters, in float32, for evaluation and export.

    `shadow = decay * shadow + (1 - decay) * param` after each optimizer step (decay 0.9999 for
    pretraining, 0.999 for SFT: docs/ARCHITECTURE.md#optimiser-and-schedules). The shadow tensors
    are created from the live parameters, so under FSDP2 they are DTensor shards laid out like the
    parameters: the update is rank-local and the state dict is sharded the same way, which is what
    DCP needs to save and reshard it.

    `warmup=True` uses `min(decay, (1 + n) / (10 + n))` for the n-th update, so very short runs
    (the CPU quickstart) get a useful average; the paper's runs use the plain constant decay.
    Buffers are not averaged (the model's buffers, e.g. `z_L_init`, are fixed).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1] (got {decay})")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        with torch.no_grad():
            self.shadow: dict[str, torch.Tensor] = {
                clean_param_name(n): p.detach().to(torch.float32 if p.dtype != torch.float64 else p.dtype).clone()
                for n, p in model.named_parameters()
                if p.requires_grad
            }

    def pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The shadows and the model's parameters they average, in the same order."""
        params = {clean_param_name(n): p for n, p in model.named_parameters() if p.requires_grad}
        missing = set(self.shadow) - set(params)
        extra = set(params) - set(self.shadow)
        if missing or extra:
            raise KeyError(f"EMA and model parameters differ: missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}")
        names = list(self.shadow)
        return [self.shadow[n] for n in names], [params[n] for n in names]

    def current_decay(self) -> float:
        """The decay the next `update` will use."""
        if self.warmup:
            n = self.num_updates
            return min(self.decay, (1.0 + n) / (10.0 + n))
        return self.decay

    def update(self, model: nn.Module) -> None:
        """Fold the current parameters into the average; call after every optimizer step."""
        self.fold(*self.pairs(model))

    @torch.no_grad()
    def fold(self, shadows: list[torch.Tensor], params: list[torch.Tensor],
             skip: set[int] | frozenset[int] = frozenset()) -> None:
        """`update` on the lists of `pairs`; `skip`: ids of parameters whose shadow was already
        updated for this step (`AdamAtan2.step_with_ema`)."""
        decay = self.current_decay()
        by_dtype: dict[tuple[Any, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for s, p in zip(shadows, params):
            if id(p) in skip:
                continue
            src = p.detach()
            if src.dtype != s.dtype:
                src = src.to(s.dtype)
            group = by_dtype.setdefault((s.device, s.dtype), ([], []))
            group[0].append(s)
            group[1].append(src)
        for s_list, p_list in by_dtype.values():
            torch._foreach_lerp_(s_list, p_list, 1.0 - decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters with the averaged ones (e.g. before export)."""
        shadows, params = self.pairs(model)
        for s, p in zip(shadows, params):
            p.copy_(s)

    @contextlib.contextmanager
    def swap(self, model: nn.Module) -> Iterator[nn.Module]:
        """Evaluate with EMA weights inside the block; the training weights come back after, bitwise."""
        shadows, params = self.pairs(model)
        with torch.no_grad():
            backup = [p.detach().clone() for p in params]
            for s, p in zip(shadows, params):
                p.copy_(s)
        try:
            yield model
        finally:
            with torch.no_grad():
                for b, p in zip(backup, params):
                    p.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        """Tensors only (plus a 0-d update counter) so DCP can save and reshard it as is."""
        sd: dict[str, Any] = {f"shadow.{n}": t for n, t in self.shadow.items()}
        sd["num_updates"] = torch.tensor(self.num_updates, dtype=torch.int64)
        return sd

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        names = {k[len("shadow."):] for k in state_dict if k.startswith("shadow.")}
        if names != set(self.shadow):
            raise KeyError(
                f"EMA state does not match the model: missing {sorted(set(self.shadow) - names)[:5]}, "
                f"unexpected {sorted(names - set(self.shadow))[:5]}"
            )
        for n, t in self.shadow.items():
            src = state_dict[f"shadow.{n}"]
            if src is not t:
                t.copy_(src)
        self.num_updates = int(state_dict.get("num_updates", 0))
