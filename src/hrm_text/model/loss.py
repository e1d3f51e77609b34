"""Response-only cross-entropy fused with the output head (docs/ARCHITECTURE.md, objective).

Only response positions carry a label, so the head runs on those rows alone: the hidden states of
labelled positions are gathered first, then `linear_cross_entropy` computes the head and the loss
chunk by chunk. It never holds more than one chunk of logits, and it keeps no logits for the
backward pass: the backward recomputes each chunk's logits from the saved hidden rows and the
per-row log-sum-exp. Compared with `head(h)` + `F.cross_entropy` over the whole row this skips the
unlabelled positions (about half of a packed instruction row) and the float32 logits that autograd
would otherwise keep alive until the backward (12,288 x 65,536 x 10 bytes = 8 GB at XL).

Arithmetic: the matmuls run in `compute_dtype` (bf16 under autocast); log-sum-exp, the softmax
and the loss are float32; the head's gradient is accumulated in float32 across chunks (on CUDA
inside the GEMM: `matmul_accumulate`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch

CHUNK_ROWS = 4096  # labelled rows per chunk: bounds the logits held at once (chunk x vocab)


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # float32, or float64 for float64 inputs


@functools.lru_cache(maxsize=None)
def gemm_out_dtype_ok(device_type: str) -> bool:
    """Whether this build's GEMMs take bf16 inputs into a float32 output (`out_dtype`), including
    addmm in place (cuBLAS with beta = 1). CUDA only."""
    if device_type != "cuda":
        return False
    try:
        a = torch.ones(16, 16, device=device_type, dtype=torch.bfloat16)
        acc = torch.mm(a, a, out_dtype=torch.float32)
        torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)
        return bool(acc[0, 0].item() == 32.0)
    except (RuntimeError, TypeError):
        return False


def matmul_accumulate(acc: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`acc + a @ b` in `dtype`, into `acc` in place (a new tensor when acc is None). On CUDA with
    lower-precision inputs the GEMM writes `dtype` itself and adds into acc (cuBLAS, beta = 1): no
    rounded product, no cast pass, no separate add. Elsewhere the product is rounded to a's dtype,
    cast and added, which is what autograd's own accumulation computes."""
    if a.dtype != dtype and gemm_out_dtype_ok(a.device.type):
        if acc is None:
            return torch.mm(a, b, out_dtype=dtype)
        return torch.addmm(acc, a, b, out_dtype=dtype, out=acc)
    prod = (a @ b).to(dtype)
    return prod if acc is None else acc.add_(prod)


def _chunk_stats_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row log-sum-exp, target logit and argmax-hit for one chunk (float32 statistics)."""
    logits = logits.to(_stat_dtype(logits.dtype))
    lse = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(1, targets[:, None]).squeeze(1)
    hit = logits.argmax(-1) == targets
    return lse, target_logit, hit


def _chunk_dlogits(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """d loss / d logits = (softmax - onehot(target)) * g, in the matmul dtype."""
    probs = torch.exp(logits.to(lse.dtype) - lse[:, None])
    probs.scatter_add_(1, targets[:, None], torch.full_like(probs[:, :1], -1.0))
    return (probs * g).to(logits.dtype)


@functools.lru_cache(maxsize=None)
def _compiled(fn_name: str) -> Callable[..., Any]:
    # on CUDA the float32 statistics are compiled: one fused pass over each chunk's logits instead
    # of about five eager passes (cast, logsumexp, gather, argmax; exp, scatter, scale, cast)
    return torch.compile({"stats": _chunk_stats_from_logits, "dlogits": _chunk_dlogits}[fn_name])


def _maybe_compiled(fn_name: str, device: torch.device) -> Callable[..., Any]:
    if device.type == "cuda":
        return _compiled(fn_name)
    return {"stats": _chunk_stats_from_logits, "dlogits": _chunk_dlogits}[fn_name]


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int, compute_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        hc = h.to(compute_dtype)
        wc = weight.to(compute_dtype)
        n = h.shape[0]
        sd = _stat_dtype(compute_dtype)
        lse = torch.empty(n, dtype=sd, device=h.device)
        loss = torch.zeros((), dtype=sd, device=h.device)
        correct = torch.zeros((), dtype=torch.int64, device=h.device)
        stats = _maybe_compiled("stats", h.device)
        for s in range(0, n, chunk):
            c_lse, c_tgt, c_hit = stats(hc[s : s + chunk] @ wc.t(), targets[s : s + chunk])
            lse[s : s + chunk] = c_lse
            loss += (c_lse - c_tgt).sum()
            correct += c_hit.sum()
        ctx.save_for_backward(hc, weight, targets, lse)
        ctx.chunk = chunk
        ctx.h_dtype = h.dtype
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_correct: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        hc, weight, targets, lse = ctx.saved_tensors
        wc = weight.to(hc.dtype)
        chunk = ctx.chunk
        grad_h = torch.empty_like(hc) if ctx.needs_input_grad[0] else None
        sd = lse.dtype
        grad_w: torch.Tensor | None = None  # float32, from the first chunk on
        w_acc_dtype = torch.promote_types(weight.dtype, sd)
        g = grad_loss.to(sd)
        dlogits_fn = _maybe_compiled("dlogits", hc.device)
        for s in range(0, hc.shape[0], chunk):
            h_c = hc[s : s + chunk]
            dlogits = dlogits_fn(h_c @ wc.t(), lse[s : s + chunk], targets[s : s + chunk], g)
            if grad_h is not None:
                grad_h[s : s + chunk] = dlogits @ wc
            if ctx.needs_input_grad[1]:
                grad_w = matmul_accumulate(grad_w, dlogits.t(), h_c, w_acc_dtype)
        return (
            None if grad_h is None else grad_h.to(ctx.h_dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None, None, None,
        )


def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = CHUNK_ROWS, compute_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of `h @ weight.T` against `targets`, and the number of argmax hits.

    h: [N, hidden] (labelled rows only), weight: [vocab, hidden], targets: [N] int64. The matmuls
    run in `compute_dtype` (default: the autocast dtype when autocast is on, else h's dtype).
    """
    if compute_dtype is None:
        dev = h.device.type
        compute_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
    with torch.autocast(h.device.type, enabled=False):
        return _LinearCrossEntropy.apply(h, weight, targets, chunk, compute_dtype)
