"""One-token decode attention as a single fused kernel (CUDA, Triton).

A decode step of an XL model evaluates 128 blocks (8 stack calls x 16 layers), each on one new token
per row. Between the fused-projection GEMM and o_proj, the eager path runs a RoPE kernel, two cache
scatters (keys, values), a flash-attention kernel over the *whole* cache length under a dense mask,
and an output-gate kernel: five launches, and an attention that reads every cache slot up to
`max_len` whatever the row's real length. `decode_attention` does all of it in one launch per block:

    gate|q|k|v  = the gqkv projection of the new token          (input, [B, 1, 4*H*D])
    q, k        = RoPE(q), RoPE(k)                              (float32, rounded to the model dtype)
    cache[pos]  = k, v                                          (written in place, one slot per row)
    out         = sigmoid(gate) * softmax(q K^T / sqrt(D)) V    over keys 0..pos of the row
                                                                 (output, [B, 1, H*D], before o_proj)

Each program owns one (row, head) and streams only that row's keys 0..pos-1 from the cache (online
softmax in float32), plus the new key, which it keeps in registers: no read-after-write on the cache.
Work is proportional to the real lengths, not to the cache size, which matters most for batched
decoding with a long `max_len`.

`decode_attention_reference` is the same contract in plain PyTorch; tests compare both to the
model's own block path (`GatedAttention.project` -> cache update -> attention -> `output` gate).
"""

from __future__ import annotations

import functools
import math

import torch

try:  # Triton ships with CUDA builds of PyTorch; CPU builds go without and use the eager path
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installed torch
    triton = None  # type: ignore[assignment]


def fused_decode_available(device: torch.device) -> bool:
    return triton is not None and device.type == "cuda"


def decode_attention_reference(
    gqkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pos: torch.Tensor,
    num_heads: int,
) -> torch.Tensor:
    """gqkv [B, 1, 4*H*D]; cos/sin [B, 1, D] float32; caches [B, H, L, D]; pos [B] or [B, 1] int64.
    Writes the new key/value at `pos` and returns the gated attention output [B, 1, H*D]."""
    from hrm_text.model.layers import apply_rope

    B = gqkv.shape[0]
    D = k_cache.shape[-1]
    H = num_heads
    gate, q, k, v = gqkv.view(B, 1, 4, H, D).unbind(2)
    q = apply_rope(q, cos, sin).transpose(1, 2)  # [B, H, 1, D]
    k = apply_rope(k, cos, sin).transpose(1, 2)
    v = v.transpose(1, 2)
    p = pos.reshape(B).long()
    rows = torch.arange(B, device=gqkv.device)
    k_cache[rows, :, p] = k[:, :, 0].to(k_cache.dtype)
    v_cache[rows, :, p] = v[:, :, 0].to(v_cache.dtype)
    L = k_cache.shape[2]
    valid = torch.arange(L, device=gqkv.device)[None, :] <= p[:, None]  # [B, L]
    scores = (q.float() @ k_cache.float().transpose(-1, -2)) / math.sqrt(D)  # [B, H, 1, L]
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    attn = (scores.softmax(-1) @ v_cache.float()).to(gqkv.dtype)  # [B, H, 1, D]
    return (torch.sigmoid(gate) * attn.transpose(1, 2)).reshape(B, 1, H * D)


if triton is not None:

    @triton.jit
    def _decode_attention_kernel(
        gqkv_ptr,
        cos_ptr,
        sin_ptr,
        k_ptr,
        v_ptr,
        pos_ptr,
        out_ptr,
        m_ptr,
        l_ptr,
        acc_ptr,
        stride_gb,
        stride_cb,
        stride_kb,
        stride_kh,
        stride_kl,
        stride_ob,
        scale,
        num_splits,
        H: tl.constexpr,
        D: tl.constexpr,
        BLOCK_N: tl.constexpr,
        SPLIT: tl.constexpr,
    ):
        b = tl.program_id(0)
        h = tl.program_id(1)
        split = tl.program_id(2)
        HD: tl.constexpr = H * D
        HALF: tl.constexpr = D // 2
        d = tl.arange(0, D)
        # rotate_half: x_rot[d] = -x[d + D/2] for the first half, x[d - D/2] for the second
        rot = tl.where(d < HALF, d + HALF, d - HALF)
        sign = tl.where(d < HALF, -1.0, 1.0)
        pos = tl.load(pos_ptr + b)
        row = gqkv_ptr + b * stride_gb + h * D
        cos = tl.load(cos_ptr + b * stride_cb + d)
        sin = tl.load(sin_ptr + b * stride_cb + d)
        dtype = gqkv_ptr.dtype.element_ty
        # RoPE in float32, rounded to the model dtype like the eager path
        q = tl.load(row + HD + d).to(tl.float32) * cos + tl.load(row + HD + rot).to(tl.float32) * sign * sin
        q = q.to(dtype).to(tl.float32)
        k_row = k_ptr + b * stride_kb + h * stride_kh
        v_row = v_ptr + b * stride_kb + h * stride_kh
        if split == 0:
            # the new key/value: written to the cache, and attended from registers (the loops below
            # read the cache strictly below `pos`, so no program reads what this one writes)
            k = tl.load(row + 2 * HD + d).to(tl.float32) * cos + tl.load(row + 2 * HD + rot).to(tl.float32) * sign * sin
            k = k.to(k_ptr.dtype.element_ty)
            v = tl.load(row + 3 * HD + d).to(v_ptr.dtype.element_ty)
            tl.store(k_row + pos * stride_kl + d, k)
            tl.store(v_row + pos * stride_kl + d, v)
            m = tl.sum(q * k.to(tl.float32), 0) * scale
            l_sum = tl.full((), 1.0, tl.float32)
            acc = v.to(tl.float32)
        else:
            m = tl.full((), float("-inf"), tl.float32)
            l_sum = tl.full((), 0.0, tl.float32)
            acc = tl.zeros((D,), tl.float32)
        # this program's share of keys 0..pos-1: equal chunks, whole BLOCK_N tiles
        chunk = tl.cdiv(tl.cdiv(pos, num_splits), BLOCK_N) * BLOCK_N
        lo = split * chunk
        hi = tl.minimum(lo + chunk, pos)
        for start in range(lo, hi, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            valid = n < hi
            keys = tl.load(k_row + n[:, None] * stride_kl + d[None, :], mask=valid[:, None], other=0.0)
            vals = tl.load(v_row + n[:, None] * stride_kl + d[None, :], mask=valid[:, None], other=0.0)
            s = tl.sum(keys.to(tl.float32) * q[None, :], 1) * scale
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 0))
            alpha = tl.exp(m - m_new)
            p = tl.exp(s - m_new)
            l_sum = l_sum * alpha + tl.sum(p, 0)
            acc = acc * alpha + tl.sum(p[:, None] * vals.to(tl.float32), 0)
            m = m_new
        if SPLIT:  # partial softmax state, merged by _decode_attention_combine
            part = (b * H + h) * num_splits + split
            tl.store(m_ptr + part, m)
            tl.store(l_ptr + part, l_sum)
            tl.store(acc_ptr + part * D + d, acc)
        else:
            attn = (acc / l_sum).to(dtype).to(tl.float32)
            gate = tl.sigmoid(tl.load(row + d).to(tl.float32)).to(dtype).to(tl.float32)
            tl.store(out_ptr + b * stride_ob + h * D + d, (gate * attn).to(dtype))

    @triton.jit
    def _decode_attention_combine(
        gqkv_ptr,
        out_ptr,
        m_ptr,
        l_ptr,
        acc_ptr,
        stride_gb,
        stride_ob,
        num_splits,
        H: tl.constexpr,
        D: tl.constexpr,
        SPLITS_POW2: tl.constexpr,
    ):
        b = tl.program_id(0)
        h = tl.program_id(1)
        d = tl.arange(0, D)
        sp = tl.arange(0, SPLITS_POW2)
        have = sp < num_splits
        part = (b * H + h) * num_splits + sp
        m = tl.load(m_ptr + part, mask=have, other=float("-inf"))
        l_sum = tl.load(l_ptr + part, mask=have, other=0.0)
        acc = tl.load(acc_ptr + part[:, None] * D + d[None, :], mask=have[:, None], other=0.0)
        w = tl.exp(m - tl.max(m, 0))  # split 0 always holds the new key, so the max is finite
        dtype = gqkv_ptr.dtype.element_ty
        attn = (tl.sum(w[:, None] * acc, 0) / tl.sum(w * l_sum, 0)).to(dtype).to(tl.float32)
        gate = tl.sigmoid(tl.load(gqkv_ptr + b * stride_gb + h * D + d).to(tl.float32)).to(dtype).to(tl.float32)
        tl.store(out_ptr + b * stride_ob + h * D + d, (gate * attn).to(dtype))


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


def num_kv_splits(batch: int, num_heads: int, max_len: int, device: torch.device) -> int:
    """Programs per (row, head): enough for about two per SM when batch x heads is small, so a
    batch-1 step is not 12 programs each walking hundreds of keys one tile after another."""
    sms = _num_sms(device)
    want = -(-2 * sms // (batch * num_heads))
    return max(1, min(want, 32, -(-max_len // 32)))


def decode_attention(
    gqkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pos: torch.Tensor,
    num_heads: int,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Fused Triton version of `decode_attention_reference` (same arguments, same result).
    `num_splits` > 1 splits each row's keys over that many programs and merges their partial
    softmax states in a second small kernel (default: `num_kv_splits`)."""
    B = gqkv.shape[0]
    H, L, D = num_heads, k_cache.shape[2], k_cache.shape[-1]
    assert gqkv.shape[1] == 1 and gqkv.stride(-1) == 1, "one new token per row, contiguous features"
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
    assert cos.stride(-1) == 1 and sin.stride() == cos.stride()
    assert D & (D - 1) == 0, "head_dim must be a power of two"
    S = num_splits or num_kv_splits(B, H, L, gqkv.device)
    out = torch.empty(B, 1, H * D, dtype=gqkv.dtype, device=gqkv.device)
    if S > 1:
        m = torch.empty(B * H * S, dtype=torch.float32, device=gqkv.device)
        l_sum = torch.empty_like(m)
        acc = torch.empty(B * H * S, D, dtype=torch.float32, device=gqkv.device)
    else:
        m = l_sum = acc = out  # unused
    block_n = 32 if S > 1 else 64
    _decode_attention_kernel[(B, H, S)](
        gqkv, cos, sin, k_cache, v_cache, pos, out, m, l_sum, acc,
        gqkv.stride(0), cos.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), out.stride(0),
        1.0 / math.sqrt(D), S,
        H=H, D=D, BLOCK_N=block_n if D <= 128 else block_n // 2, SPLIT=S > 1, num_warps=4,
    )  # fmt: skip
    if S > 1:
        _decode_attention_combine[(B, H)](
            gqkv, out, m, l_sum, acc, gqkv.stride(0), out.stride(0), S,
            H=H, D=D, SPLITS_POW2=triton.next_power_of_2(S), num_warps=4,
        )  # fmt: skip
    return out
