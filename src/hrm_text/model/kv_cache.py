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
    """Keys and values of every (stack call, layer) slot: `k[slot]`, `v[slot]` are [B, H, L, D].

    Each slot is its own tensor (not a view into one big tensor), so a compiled attention layer sees
    inputs of identical layout at every slot and is compiled once, not once per slot.
    """

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
        shape = (batch_size, num_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_slots)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_slots)]
        self.num_slots = num_slots
        self.batch_size = batch_size
        self.max_len = max_len

    def view(self, slot: int, positions: torch.Tensor, rows: torch.Tensor | None = None) -> "CacheView":
        return CacheView(self.k[slot], self.v[slot], positions, rows)

    def prompt_writes(self) -> "PromptWrites":
        """This cache as a prefill should see it (see PromptWrites)."""
        return PromptWrites(self)


class PromptWrites:
    """A prefill's view of a StaticKVCache: each layer writes the prompt's keys and values into the
    cache and attends over those new keys only. A PrefixLM prompt sees nothing but itself, so the
    cache's other contents (and its length) need not be read at all; the attention mask is then the
    prompt's own [T, T] padding mask."""

    def __init__(self, cache: StaticKVCache):
        self.cache = cache

    def view(self, slot: int, positions: torch.Tensor, rows: torch.Tensor | None = None) -> "CacheView":
        return CacheView(self.cache.k[slot], self.cache.v[slot], positions, rows, attend_new_only=True)


@dataclass
class CacheView:
    """What one attention layer in one stack call sees of the cache.

    k, v: this slot's [B, H, L, D] cache tensors.
    positions: [b, Tq] int64, where each new key/value is written along the cache's time axis.
    rows: optional [b] int64 cache rows the batch maps to (None = all rows, b == B).
    attend_new_only: return the new keys/values instead of the slot's (see PromptWrites).
    """

    k: torch.Tensor
    v: torch.Tensor
    positions: torch.Tensor
    rows: torch.Tensor | None = None
    attend_new_only: bool = False

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v ([b, H, Tq, D]) and return the slot's keys and values for these rows."""
        kc, vc = self.k, self.v
        b, H, Tq, D = k.shape
        if self.attend_new_only:  # one indexed write per tensor: rows x positions -> [b, Tq, H, D]
            rows = self.rows if self.rows is not None else torch.arange(b, device=k.device)
            kc[rows[:, None], :, self.positions] = k.transpose(1, 2).to(kc.dtype)
            vc[rows[:, None], :, self.positions] = v.transpose(1, 2).to(vc.dtype)
            return k, v
        idx = self.positions[:, None, :, None].expand(b, H, Tq, D)
        if self.rows is None:
            kc.scatter_(2, idx, k.to(kc.dtype))
            vc.scatter_(2, idx, v.to(vc.dtype))
            return kc, vc
        kr = kc.index_select(0, self.rows).scatter_(2, idx, k.to(kc.dtype))
        vr = vc.index_select(0, self.rows).scatter_(2, idx, v.to(vc.dtype))
        kc.index_copy_(0, self.rows, kr)
        vc.index_copy_(0, self.rows, vr)
        return kr, vr
