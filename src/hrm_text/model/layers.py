"""Building blocks shared by HRM and every baseline (docs/ARCHITECTURE.md#block).

Parameter names follow the released checkpoint's on-disk layout (`attn.gqkv_proj`, `attn.o_proj`,
`mlp.gate_up_proj`, `mlp.down_proj`), so our state dict is transformers' file format as-is.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from hrm_text.model.attention import AttnMask, attention
from hrm_text.model.kv_cache import CacheView


Linear = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, weight [out, in]) -> x @ weight.T


def rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm with no learnable scale, computed in float32 (docs/ARCHITECTURE.md#magicnorm)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


# Clipping a normal at +-3 sigma shrinks its std to 0.98658 sigma; like JAX's truncated-normal
# initialisers (and the HRM reference), we widen sigma so the result has exactly the requested std.
_TRUNC3_STD = 0.9865783926


def trunc_normal_(w: torch.Tensor, std: float) -> torch.Tensor:
    """Truncated normal clipped at 3 (pre-truncation) standard deviations, with std `std` after
    truncation (LeCun init when std = 1/sqrt(fan_in))."""
    sigma = std / _TRUNC3_STD
    return nn.init.trunc_normal_(w, mean=0.0, std=sigma, a=-3 * sigma, b=3 * sigma)


class RotaryEmbedding(nn.Module):
    """RoPE tables computed in float32 from explicit position ids (positions restart per example)."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, D]
        return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, T, H, D]; cos/sin: [B, T, D] float32. Rotation is done in float32, result in x's dtype."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]).type_as(x)


class GatedAttention(nn.Module):
    """Multi-head attention with a per-channel sigmoid output gate and one fused gate|q|k|v projection."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.gqkv_proj = nn.Linear(hidden_size, 4 * inner, bias=False)  # rows: gate, q, k, v
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)

    def reset_parameters(self) -> None:
        trunc_normal_(self.gqkv_proj.weight, 1.0 / math.sqrt(self.gqkv_proj.in_features))
        trunc_normal_(self.o_proj.weight, 1.0 / math.sqrt(self.o_proj.in_features))

    def project(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """gate [B, T, H, D] and rotated q, k and v [B, H, T, D] from the fused projection."""
        B, T, _ = x.shape
        gate, q, k, v = self.gqkv_proj(x).view(B, T, 4, self.num_heads, self.head_dim).unbind(2)
        cos, sin = rope
        q = apply_rope(q, cos, sin).transpose(1, 2)
        k = apply_rope(k, cos, sin).transpose(1, 2)
        return gate, q, k, v.transpose(1, 2)

    def output(self, gate: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Per-channel sigmoid gate on the attention output [B, H, T, D], then o_proj."""
        B, _, T, _ = attn_out.shape
        out = torch.sigmoid(gate) * attn_out.transpose(1, 2)
        return self.o_proj(out.reshape(B, T, -1))

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: AttnMask,
        cache: CacheView | None = None,
    ) -> torch.Tensor:
        gate, q, k, v = self.project(x, rope)
        if cache is not None:
            k, v = cache.update(k, v)
        return self.output(gate, attention(q, k, v, mask))


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)  # rows: gate, up
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def reset_parameters(self) -> None:
        trunc_normal_(self.gate_up_proj.weight, 1.0 / math.sqrt(self.gate_up_proj.in_features))
        trunc_normal_(self.down_proj.weight, 1.0 / math.sqrt(self.down_proj.in_features))

    def forward(self, x: torch.Tensor, linear: Linear | None = None) -> torch.Tensor:
        # through the modules by default, so module swaps (float8 training, adapters) apply
        if linear is None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        gate, up = linear(x, self.gate_up_proj.weight).chunk(2, dim=-1)
        return linear(F.silu(gate) * up, self.down_proj.weight)


class Block(nn.Module):
    """Pre-norm Transformer block: x + Attn(Norm(x)), then x + MLP(Norm(x))."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, intermediate_size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.attn = GatedAttention(hidden_size, num_heads, head_dim)
        self.mlp = SwiGLU(hidden_size, intermediate_size)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: AttnMask, cache: CacheView | None = None) -> torch.Tensor:
        x = x + self.attn(rms_norm(x, self.eps), rope, mask, cache)
        return x + self.mlp(rms_norm(x, self.eps))


class Stack(nn.Module):
    """`n` pre-norm blocks then one final norm at the exit: MagicNorm (docs/ARCHITECTURE.md#magicnorm)."""

    def __init__(self, n_layers: int, hidden_size: int, num_heads: int, head_dim: int, intermediate_size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.layers = nn.ModuleList(
            [Block(hidden_size, num_heads, head_dim, intermediate_size, eps) for _ in range(n_layers)]
        )

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: AttnMask,
        cache_views: list[CacheView] | None = None,
    ) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            view = None if cache_views is None else cache_views[i]
            x = layer(x, rope, mask, view)
        return rms_norm(x, self.eps)
