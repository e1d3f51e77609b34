"""Sampling the next token of many rows at once, on the logits' device.

    toks = sample(logits, temperatures, top_ks, top_ps, uniforms)   # logits [n, V] -> tokens [n]

Each row is filtered (temperature, then top-k, then top-p, the usual order) and drawn by inverse
CDF from one uniform number. The uniforms come from each request's own seeded generator on the host
(`draw_uniforms`), so a seeded request gives the same tokens whatever else shares its batch, while
the work is a few batched kernels and no per-row device-to-host copy of the logits (rollouts sample
every row of every step).
"""

from __future__ import annotations

from typing import Sequence

import torch


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A small host tensor on `device` without waiting for the device's queue. To CUDA it goes
    through pinned memory: a copy from pageable memory first synchronizes the stream, which would
    stall a pipelined decode step."""
    device = torch.device(device)
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def draw_uniforms(gens: Sequence[torch.Generator | None], device: torch.device | str) -> torch.Tensor:
    """One uniform in [0, 1) per row from its generator (None: the global RNG), as a [n] tensor."""
    u = torch.cat([torch.rand(1, generator=g) for g in gens]) if gens else torch.zeros(0)
    return to_device(u, device)


def sample(
    logits: torch.Tensor,
    temperatures: Sequence[float],
    top_ks: Sequence[int],
    top_ps: Sequence[float],
    uniforms: torch.Tensor,
) -> torch.Tensor:
    """Tokens [n] (int64, on the logits' device). Temperatures must be > 0; top_k 0 = off;
    top_p in (0, 1]: the smallest set of most likely tokens whose probability reaches top_p (the
    most likely token always stays)."""
    V = logits.shape[-1]
    dev = logits.device
    # the per-row settings in one host-to-device copy: [n, 3] = temperature, top-k (V when off), top-p
    rows = torch.tensor([[t, k if k > 0 else V, p] for t, k, p in zip(temperatures, top_ks, top_ps)], dtype=torch.float32)
    t, k, p = to_device(rows, dev).unbind(-1)
    t, k, p = t[:, None], k[:, None], p[:, None]
    sv, si = torch.sort(logits.float() / t, dim=-1, descending=True)
    rank = torch.arange(V, device=dev)[None, :]
    sv = sv.masked_fill(rank >= k, -torch.inf)  # top-k: keep the k most likely
    probs = torch.softmax(sv, dim=-1)
    probs = probs * ((probs.cumsum(-1) - probs) < p)  # top-p: mass before a token must be < p
    cdf = probs.cumsum(-1)
    target = uniforms.to(dev, torch.float32)[:, None] * cdf[:, -1:]
    pos = torch.searchsorted(cdf, target, right=True).clamp_(max=V - 1)
    # a target that lands past the last kept token (rounding at the top end) takes the last kept one
    last_kept = (probs > 0).sum(-1, keepdim=True) - 1
    pos = torch.minimum(pos, last_kept)
    return si.gather(1, pos).squeeze(1)
