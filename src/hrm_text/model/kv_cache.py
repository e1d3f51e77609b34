"""Static KV cache with one slot per (stack call, layer): a recurrent model revisits each layer
several times per token, and every visit has its own keys and values.

Slot index = call_index * layers_per_stack + layer_index, the same order as transformers'
`hrm_text` (`cycle_offset + layer_idx`). Shapes are fixed at construction so a decode step can be
captured in a CUDA graph; writes go to explicit per-row positions, so rows of a batch can be at
different lengths (continuous batching).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class StaticKVCache:
    def __init__(
        self,
        num_slots: int,
        batch_size: int,
        num_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        shape = (num_slots, batch_size, num_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.num_slots = num_slots
        self.batch_size = batch_size
        self.max_len = max_len

    def view(self, slot: int, positions: torch.Tensor, rows: torch.Tensor | None = None) -> "CacheView":
        return CacheView(self, slot, positions, rows)

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


@dataclass
class CacheView:
    """What one attention layer in one stack call sees of the cache.

    positions: [b, Tq] int64, where each new key/value is written along the cache's time axis.
    rows: optional [b] int64 cache rows the batch maps to (None = rows 0..b-1, the whole cache).
    """

    cache: StaticKVCache
    slot: int
    positions: torch.Tensor
    rows: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v ([b, H, Tq, D]) and return the slot's keys and values for these rows."""
        kc, vc = self.cache.k[self.slot], self.cache.v[self.slot]
        b, H, Tq, D = k.shape
        idx = self.positions[:, None, :, None].expand(b, H, Tq, D)
        if self.rows is None and b == self.cache.batch_size:
            kc.scatter_(2, idx, k.to(kc.dtype))
            vc.scatter_(2, idx, v.to(vc.dtype))
            return kc, vc
        rows = self.rows if self.rows is not None else torch.arange(b, device=k.device)
        kr, vr = kc[rows], vc[rows]
        kr.scatter_(2, idx, k.to(kc.dtype))
        vr.scatter_(2, idx, v.to(vc.dtype))
        kc[rows] = kr
        vc[rows] = vr
        return kr, vr
