"""One Triton kernel per parameter for Adam-atan2 (CUDA only; imported lazily by optim.py, since
CPU builds of torch ship without Triton).

The foreach path in optim.py makes about ten passes over float32 state per step (weight decay,
lerp, mul, addcmul, sqrt, div, atan2, add, ...), 80 bytes per parameter at XL; this kernel reads
p, g, m, v once and writes p, m, v once: 28 bytes per parameter. Same update, same order of
operations per element:

    p *= 1 - lr*wd;  m = lerp(m, g, 1-b1);  v = b2*v + (1-b2)*g*g
    p -= lr/bc1 * atan2(m, sqrt(v)/sqrt(bc2))

With a weight EMA's shadow (`shadows`), the same pass also folds the new p into it, as
`torch.lerp(shadow, p, w)` computes it: 12 more bytes per parameter, where the separate EMA pass
reads p and the shadow again and writes the shadow (one read of each weight saved per step).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

try:  # the libdevice module moved between Triton releases
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - older Triton
    from triton.language.extra.cuda import libdevice  # type: ignore[no-redef]

_BLOCK = 2048


@triton.jit
def _adam_atan2_kernel(p_ptr, g_ptr, m_ptr, v_ptr, s_ptr, n, decay, one_minus_b1, b2, one_minus_b2, step_size,
                       inv_sqrt_bc2, ema_w, BLOCK: tl.constexpr, EMA: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    p = tl.load(p_ptr + offs, mask=mask).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
    m = tl.load(m_ptr + offs, mask=mask)
    v = tl.load(v_ptr + offs, mask=mask)
    p = p * decay
    m = m + one_minus_b1 * (g - m)
    v = v * b2 + one_minus_b2 * g * g
    p = p - step_size * libdevice.atan2(m, tl.sqrt(v) * inv_sqrt_bc2)
    p_new = p.to(p_ptr.dtype.element_ty)
    tl.store(p_ptr + offs, p_new, mask=mask)
    tl.store(m_ptr + offs, m, mask=mask)
    tl.store(v_ptr + offs, v, mask=mask)
    if EMA:  # torch.lerp's two forms, chosen by the weight as torch chooses them
        s = tl.load(s_ptr + offs, mask=mask)
        pe = p_new.to(tl.float32)
        if ema_w < 0.5:
            s = s + ema_w * (pe - s)
        else:
            s = pe - (pe - s) * (1.0 - ema_w)
        tl.store(s_ptr + offs, s, mask=mask)


def supported(p: torch.Tensor, m: torch.Tensor) -> bool:
    """Plain contiguous CUDA tensors with float32 state (DTensor shards take the foreach path)."""
    g = p.grad
    return (
        type(p) is torch.nn.Parameter or type(p) is torch.Tensor
    ) and p.is_cuda and p.is_contiguous() and g is not None and g.is_contiguous() and m.dtype == torch.float32


def shadow_supported(p: torch.Tensor, s: torch.Tensor | None) -> bool:
    """An EMA shadow the kernel can update alongside p: a plain contiguous float32 tensor like it."""
    return (s is not None and type(s) is torch.Tensor and s.dtype == torch.float32 and s.is_contiguous()
            and s.device == p.device and s.shape == p.shape)


def adam_atan2_step(
    params: list[torch.Tensor], exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor],
    *, lr: float, b1: float, b2: float, wd: float, bc1: float, bc2: float,
    shadows: list[torch.Tensor | None] | None = None, ema_weight: float = 0.0,
) -> None:
    """One launch per tensor; `shadows[i]` (checked by `shadow_supported`, or None) is lerped
    towards the updated params[i] with weight `ema_weight`."""
    decay = 1.0 - lr * wd
    step_size = lr / bc1
    inv_sqrt_bc2 = 1.0 / bc2**0.5
    for i, (p, m, v) in enumerate(zip(params, exp_avgs, exp_avg_sqs)):
        s = shadows[i] if shadows is not None else None
        n = p.numel()
        grid = (triton.cdiv(n, _BLOCK),)
        _adam_atan2_kernel[grid](p, p.grad, m, v, m if s is None else s, n, decay, 1.0 - b1, b2, 1.0 - b2, step_size,
                                 inv_sqrt_bc2, ema_weight, BLOCK=_BLOCK, EMA=s is not None)
