"""PrefixLM attention over packed rows, with one mask object shared by every layer and call.

Rule (docs/ARCHITECTURE.md#sequence-layout-and-objective), for query position q and key position k
of the same row:

    allowed(q, k) = doc[q] == doc[k] and (k <= q or (prefix[q] and prefix[k]))

Instruction tokens see the whole instruction of their own example (bidirectional); response tokens
see their example causally; nothing crosses examples. Every query sees at least itself, so no row of
the softmax is empty (padding shares doc id -1 and is causal among itself).

Backends:
  sdpa  explicit boolean mask [B, 1, T, T]; CPU, MPS and small runs; also KV-cache decoding.
  flex  FlexAttention BlockMask built once per batch; CUDA training. Skips fully masked blocks.
  fa3   FlashAttention 3 varlen (sm90 only, if `flash_attn_interface` imports): two calls per
        layer, instruction queries non-causal over instruction keys, response queries causal with
        bottom-right alignment over the whole example.
`build_prefix_lm_mask(..., backend="auto")` picks flex on CUDA, sdpa elsewhere.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F


@dataclass
class AttnMask:
    """A prepared attention mask. Exactly one of the payloads is set, according to `kind`."""

    kind: str  # "sdpa" | "flex" | "fa3"
    dense: torch.Tensor | None = None  # [B, 1, Tq, Tk] bool, True = may attend
    block_mask: Any = None  # torch.nn.attention.flex_attention.BlockMask
    varlen: "VarlenInfo | None" = None


@dataclass
class VarlenInfo:
    """Index bookkeeping for the fa3 two-call decomposition of one packed batch (flattened B*T)."""

    prefix_idx: torch.Tensor  # flat indices of instruction tokens, example by example
    resp_idx: torch.Tensor  # flat indices of response/padding tokens, example by example
    cu_q_prefix: torch.Tensor  # int32 [n+1] cumulative instruction lengths
    cu_q_resp: torch.Tensor  # int32 [n+1] cumulative response lengths
    cu_k: torch.Tensor  # int32 [n+1] cumulative example lengths (keys = whole example, flat order)
    max_prefix: int
    max_resp: int
    max_k: int


def dense_prefix_lm_mask(doc_ids: torch.Tensor, is_prefix: torch.Tensor) -> torch.Tensor:
    """Boolean [B, 1, T, T] mask, True where attention is allowed."""
    T = doc_ids.shape[-1]
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    idx = torch.arange(T, device=doc_ids.device)
    causal = idx[None, :, None] >= idx[None, None, :]
    both_prefix = is_prefix[:, :, None] & is_prefix[:, None, :]
    return (same_doc & (causal | both_prefix)).unsqueeze(1)


def default_backend(device: torch.device) -> str:
    return "flex" if device.type == "cuda" else "sdpa"


def fa3_available() -> bool:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        return False
    try:
        import flash_attn_interface  # noqa: F401
    except ImportError:
        return False
    return True


def build_prefix_lm_mask(doc_ids: torch.Tensor, is_prefix: torch.Tensor, backend: str = "auto") -> AttnMask:
    """Build the PrefixLM mask for a packed batch once; pass the result to every attention call."""
    if backend == "auto":
        backend = default_backend(doc_ids.device)
    if backend == "sdpa":
        return AttnMask("sdpa", dense=dense_prefix_lm_mask(doc_ids, is_prefix))
    if backend == "flex":
        return AttnMask("flex", block_mask=_flex_block_mask(doc_ids, is_prefix))
    if backend == "fa3":
        if not fa3_available():
            raise RuntimeError("attn_backend=fa3 needs an sm90 GPU and the flash_attn_interface (FA3) module")
        return AttnMask("fa3", varlen=varlen_info(doc_ids, is_prefix))
    raise ValueError(f"unknown attention backend {backend!r}; choose auto, sdpa, flex or fa3")


def _flex_block_mask(doc_ids: torch.Tensor, is_prefix: torch.Tensor) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    B, T = doc_ids.shape
    doc = doc_ids.to(torch.int32)
    pre = is_prefix

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (doc[b, q] == doc[b, k]) & ((k <= q) | (pre[b, q] & pre[b, k]))

    # Not compiled: a cold compile of the mask builder took over 240 of the 272 s from launch to the
    # first step at XL width on an H200 (docs/PERFORMANCE.md). Eager it evaluates the [T, T] mask
    # once per batch (a few GB of transient memory at T = 12,288) in a few elementwise kernels.
    return create_block_mask(mask_mod, B, None, T, T, device=doc_ids.device, _compile=False)


@functools.lru_cache(maxsize=1)
def _compiled_flex() -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def varlen_info(doc_ids: torch.Tensor, is_prefix: torch.Tensor) -> VarlenInfo:
    """Split each packed example into (instruction, response) index runs for varlen kernels.

    Padding is treated as one more example with an empty instruction part (causal), so every
    position is covered exactly once.
    """
    B, T = doc_ids.shape
    flat_doc = (doc_ids.to(torch.int64) + 1) + torch.arange(B, device=doc_ids.device)[:, None] * (T + 1)
    flat_doc = flat_doc.reshape(-1)
    flat_pre = is_prefix.reshape(-1)
    # examples appear contiguously in each row, so run boundaries are where the id changes
    change = torch.ones_like(flat_doc, dtype=torch.bool)
    change[1:] = flat_doc[1:] != flat_doc[:-1]
    starts = torch.nonzero(change).flatten()
    lengths = torch.diff(torch.cat([starts, torch.tensor([flat_doc.numel()], device=starts.device)]))
    pre_counts = torch.segment_reduce(flat_pre.to(torch.float32), "sum", lengths=lengths).to(torch.int64)
    resp_counts = lengths - pre_counts
    pos = torch.arange(flat_doc.numel(), device=doc_ids.device)
    prefix_idx = pos[flat_pre]
    resp_idx = pos[~flat_pre]

    def cu(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros(1, dtype=torch.int32, device=x.device), x.cumsum(0).to(torch.int32)])

    return VarlenInfo(
        prefix_idx=prefix_idx,
        resp_idx=resp_idx,
        cu_q_prefix=cu(pre_counts),
        cu_q_resp=cu(resp_counts),
        cu_k=cu(lengths),
        max_prefix=int(pre_counts.max()),
        max_resp=int(resp_counts.max()),
        max_k=int(lengths.max()),
    )


def _fa3_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, info: VarlenInfo, varlen_fn: Callable | None = None) -> torch.Tensor:
    """PrefixLM with two varlen calls. q, k, v are [B, H, T, D]; returns [B, H, T, D]."""
    if varlen_fn is None:
        from flash_attn_interface import flash_attn_varlen_func as varlen_fn  # type: ignore[no-redef]
    B, H, T, D = q.shape
    qf = q.transpose(1, 2).reshape(B * T, H, D)
    kf = k.transpose(1, 2).reshape(B * T, H, D)
    vf = v.transpose(1, 2).reshape(B * T, H, D)
    out = torch.empty_like(qf)
    # keys of example i are its prefix followed by its response: exactly the flat run [cu_k[i], cu_k[i+1])
    kp, vp = kf[info.prefix_idx], vf[info.prefix_idx]
    if info.prefix_idx.numel():
        o_pre = varlen_fn(qf[info.prefix_idx], kp, vp, info.cu_q_prefix, info.cu_q_prefix, info.max_prefix, info.max_prefix, causal=False)
        out[info.prefix_idx] = o_pre[0] if isinstance(o_pre, tuple) else o_pre
    if info.resp_idx.numel():
        o_resp = varlen_fn(qf[info.resp_idx], kf, vf, info.cu_q_resp, info.cu_k, info.max_resp, info.max_k, causal=True)
        out[info.resp_idx] = o_resp[0] if isinstance(o_resp, tuple) else o_resp
    return out.reshape(B, T, H, D).transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttnMask) -> torch.Tensor:
    """Scaled dot-product attention under a prepared mask. q: [B, H, Tq, D], k, v: [B, H, Tk, D]."""
    if mask.kind == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense)
    if mask.kind == "flex":
        if torch.compiler.is_compiling():  # already inside a compiled region (e.g. a compiled block)
            from torch.nn.attention.flex_attention import flex_attention

            return flex_attention(q, k, v, block_mask=mask.block_mask)
        return _compiled_flex()(q, k, v, block_mask=mask.block_mask)
    if mask.kind == "fa3":
        assert mask.varlen is not None
        return _fa3_varlen(q, k, v, mask.varlen)
    raise ValueError(f"unknown mask kind {mask.kind!r}")
