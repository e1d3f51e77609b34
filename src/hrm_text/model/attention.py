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
  flex_fa4  the same BlockMask on FlexAttention's FlashAttention-4 backend (`BACKEND="FLASH"`:
        CuTe DSL kernels JIT-built for the mask, sm90+), if the `flash-attn-4` package imports.
  varlen  PyTorch's built-in FlashAttention-2 varlen kernels (`torch.nn.attention.varlen`, CUDA
        sm80+): two calls per layer, instruction queries non-causal over instruction keys,
        response queries causal with bottom-right alignment over the whole example. Computes only
        the allowed pairs (up to the kernel's tile edges) and needs no [T, T] mask build.
  fa3   the same two-call split on FlashAttention 3 (sm90 only, if `flash_attn_interface` imports).
  cudnn EXPERIMENTAL, not selectable in configs (it failed on an H100, docs/PERFORMANCE.md): PyTorch's
        cuDNN attention on ragged sequences. Every query causal over its example, then the
        instruction queries again, non-causal over their instruction; the instruction rows of
        the first call are computed and dropped (about P^2/2 extra pairs per example), because
        that call never relies on the kernel's causal alignment for q != k.
`build_prefix_lm_mask(..., backend="auto")` picks flex on CUDA, sdpa elsewhere.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from hrm_text.config import ATTN_BACKENDS


FLEX_BLOCK = 128  # FlexAttention's sparse block size: the granularity at which masked blocks are skipped


@dataclass
class AttnMask:
    """A prepared attention mask. Exactly one of the payloads is set, according to `kind`."""

    kind: str  # "sdpa" | "flex" | "varlen" | "fa3" | "cudnn"
    dense: torch.Tensor | None = None  # [B, 1, Tq, Tk] bool, True = may attend
    block_mask: Any = None  # torch.nn.attention.flex_attention.BlockMask
    flex_options: dict[str, Any] | None = None  # flex's kernel_options (backend flex_fa4: BACKEND=FLASH)
    varlen: "VarlenInfo | None" = None


@dataclass
class VarlenInfo:
    """Index bookkeeping for the two-call varlen decomposition of one packed batch (flattened B*T).

    `perm` lists the flat positions of every instruction token (example by example), then of every
    response or padding token: one gather puts the queries of both calls in place, and one gather
    with `inv_perm` puts the outputs back. The `max_*` are host ints, computed once per batch."""

    perm: torch.Tensor  # int64 [B*T]: instruction positions, then response/padding positions
    inv_perm: torch.Tensor  # int64 [B*T]: inverse of perm
    n_prefix: int  # number of instruction tokens in the batch (the split point of perm)
    cu_q_prefix: torch.Tensor  # int32 [m+1] cumulative instruction lengths of the m examples that have one
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


@functools.lru_cache(maxsize=1)  # facts of the process: asked for every batch's mask
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
    if (why := backend_unavailable(backend, doc_ids.device)) is not None:
        raise RuntimeError(f"attn_backend={backend} {why}")
    if backend == "sdpa":
        return AttnMask("sdpa", dense=dense_prefix_lm_mask(doc_ids, is_prefix))
    if backend in ("flex", "flex_fa4"):
        return AttnMask("flex", block_mask=_flex_block_mask(doc_ids, is_prefix),
                        flex_options=dict(FLEX_FA4_OPTIONS) if backend == "flex_fa4" else None)
    if backend in ("fa3", "varlen", "cudnn"):
        return AttnMask(backend, varlen=varlen_info(doc_ids, is_prefix))
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(ATTN_BACKENDS)}")


def query_bounds(doc_ids: torch.Tensor, is_prefix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's allowed keys as one interval [lo, hi] (int32 [B, T], inclusive), no host sync.

    Exact for rows laid out as data/batch.py packs them: each example one contiguous run with its
    instruction first, padding only at the end of a row. Then a query may attend from its
    example's first position up to the end of the instruction (instruction queries) or up to
    itself (response and padding queries). Another layout fails an asynchronous device-side check
    (raised at the next synchronisation; at once on CPU) rather than silently masking wrong."""
    B, T = doc_ids.shape
    same = doc_ids[:, 1:] == doc_ids[:, :-1]
    ordered = torch.where(doc_ids < 0, torch.iinfo(doc_ids.dtype).max, doc_ids)  # padding sorts last
    ok = (ordered[:, 1:] >= ordered[:, :-1]).all() & ~(same & is_prefix[:, 1:] & ~is_prefix[:, :-1]).any()
    torch._assert_async(ok, "PrefixLM flex mask: rows must be packed as data/batch.py does (each example one "
                        "contiguous run with its instruction first, padding at the end of the row)")
    pos = torch.arange(T, device=doc_ids.device).expand(B, T)
    start = torch.ones_like(doc_ids, dtype=torch.bool)
    start[:, 1:] = ~same
    lo = torch.where(start, pos, 0).cummax(-1).values
    # the first position after q that ends q's instruction: a response token or another example
    stop = torch.where(start | ~is_prefix, pos, T)
    stop = torch.cat([stop[:, 1:], torch.full_like(stop[:, :1], T)], dim=1).flip(-1).cummin(-1).values.flip(-1)
    hi = torch.where(is_prefix, stop - 1, pos)
    return lo.to(torch.int32), hi.to(torch.int32)


def _flex_block_mask(doc_ids: torch.Tensor, is_prefix: torch.Tensor) -> Any:
    """The PrefixLM BlockMask. Its mask_mod reads two bounds per query (`query_bounds`): cheaper in
    the kernel's partially masked blocks than comparing doc ids and instruction flags of both
    sides, and the block tables are counted from the bounds without a dense [T, T] mask."""
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask

    B, T = doc_ids.shape
    lo, hi = query_bounds(doc_ids, is_prefix)

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (k >= lo[b, q]) & (k <= hi[b, q])

    S = FLEX_BLOCK
    if T % S:
        # Not compiled: a cold compile of the mask builder took over 240 of the 272 s from launch to
        # the first step at XL width on an H200 (docs/PERFORMANCE.md).
        return create_block_mask(mask_mod, B, None, T, T, device=doc_ids.device, _compile=False)
    n = T // S
    first = torch.arange(n, device=doc_ids.device, dtype=torch.int32) * S  # key blocks' first positions
    # allowed keys of each query inside each key block, summed over the query block: [B, n, n]
    inside = (torch.minimum(hi[..., None], first + S - 1) - torch.maximum(lo[..., None], first) + 1).clamp_min(0)
    counts = inside.view(B, n, S, n).sum(2, dtype=torch.int32)
    full = counts == S * S
    partial = (counts > 0) & ~full

    def table(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # flex's layout: per query block, how many key blocks, then their indices (those first)
        num = m.sum(-1, dtype=torch.int32)[:, None]
        idx = torch.argsort(m.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)[:, None]
        return num, idx

    kv_num, kv_idx = table(partial)
    full_num, full_idx = table(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=S, mask_mod=mask_mod, seq_lengths=(T, T))


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
    perm = torch.cat([pos[flat_pre], pos[~flat_pre]])
    inv_perm = torch.empty_like(perm)
    inv_perm[perm] = pos

    def cu(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros(1, dtype=torch.int32, device=x.device), x.cumsum(0).to(torch.int32)])

    has_pre = pre_counts > 0
    # one host sync per batch for the kernels' launch sizes (never inside the layers)
    n_prefix, max_prefix, max_resp, max_k, n_with_pre = torch.stack(
        [pre_counts.sum(), pre_counts.max(), resp_counts.max(), lengths.max(), has_pre.sum()]
    ).tolist()
    # examples without instruction tokens (padding, the causal objectives) drop out of the
    # instruction call: some kernels reject empty sequences, and they add no work. A stable sort
    # puts the others first, in order, so the known count selects them without another sync.
    pre_nonzero = pre_counts[torch.argsort((~has_pre).to(torch.int8), stable=True)[: int(n_with_pre)]]
    return VarlenInfo(
        perm=perm,
        inv_perm=inv_perm,
        n_prefix=int(n_prefix),
        cu_q_prefix=cu(pre_nonzero),
        cu_q_resp=cu(resp_counts),
        cu_k=cu(lengths),
        max_prefix=int(max_prefix),
        max_resp=int(max_resp),
        max_k=int(max_k),
    )


VarlenFn = Callable[..., torch.Tensor]  # (q, k, v, cu_q, cu_k, max_q, max_k, causal=) on [tokens, H, D]


def _tokens_first(*ts: torch.Tensor) -> list[torch.Tensor]:
    """[B, H, T, D] -> [B*T, H, D], the varlen kernels' layout (inverse: `_heads_first`)."""
    return [t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3]) for t in ts]


def _heads_first(out: torch.Tensor, B: int, T: int) -> torch.Tensor:
    return out.reshape(B, T, *out.shape[1:]).transpose(1, 2)


def _two_call_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, info: VarlenInfo, varlen_fn: VarlenFn) -> torch.Tensor:
    """PrefixLM with two varlen calls. q, k, v are [B, H, T, D]; returns [B, H, T, D].

    Call 1: instruction queries, non-causal, over their example's instruction keys.
    Call 2: response (and padding) queries, causal with bottom-right alignment, over the whole
    example. Both read their queries from one gather by `perm`; outputs return by `inv_perm`."""
    B, _, T, _ = q.shape
    qf, kf, vf = _tokens_first(q, k, v)
    n_pre = info.n_prefix
    q_pre, q_resp = qf.index_select(0, info.perm).split([n_pre, B * T - n_pre])
    outs = []
    if n_pre:
        idx = info.perm[:n_pre]
        # keys of example i's instruction = rows [cu_q_prefix[i], cu_q_prefix[i+1]) of the gathered keys
        outs.append(varlen_fn(q_pre, kf.index_select(0, idx), vf.index_select(0, idx), info.cu_q_prefix,
                              info.cu_q_prefix, info.max_prefix, info.max_prefix, causal=False))
    if n_pre < B * T:
        # keys of example i = its instruction then its response = the flat run [cu_k[i], cu_k[i+1])
        outs.append(varlen_fn(q_resp, kf, vf, info.cu_q_resp, info.cu_k, info.max_resp, info.max_k, causal=True))
    return _heads_first(torch.cat(outs).index_select(0, info.inv_perm), B, T)


def _fa3_fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
            max_q: int, max_k: int, causal: bool) -> torch.Tensor:
    from flash_attn_interface import flash_attn_varlen_func  # optional: FlashAttention 3 (not on PyPI)

    out = flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, causal=causal)
    return out[0] if isinstance(out, tuple) else out


@functools.lru_cache(maxsize=1)
def _torch_varlen_fn() -> VarlenFn:
    """PyTorch's own FlashAttention-2 varlen kernels (`torch.nn.attention.varlen`, CUDA sm80+).
    Its keyword for causal masking changed between releases (is_causal, then window_size)."""
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
           max_q: int, max_k: int, causal: bool) -> torch.Tensor:
        if "is_causal" in params:
            return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=causal)
        return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, window_size=(-1, 0) if causal else (-1, -1))

    return fn


def _bucket(n: int) -> int:
    """Round a max length up to a power of two (at least 128): cuDNN builds one execution plan per
    problem shape, so a handful of buckets keeps new batches on cached plans."""
    return max(128, 1 << (max(n, 1) - 1).bit_length())


def _cudnn_fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
              max_q: int, max_k: int, causal: bool) -> torch.Tensor:
    # The aten op behind SDPA's cuDNN path for nested (jagged) tensors; it has its own backward.
    # Used only with equal query and key runs when causal, so the diagonal's alignment is moot.
    need_lse = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    return torch.ops.aten._cudnn_attention_forward(
        q, k, v, None, cu_q, cu_k, _bucket(max_q), _bucket(max_k), need_lse, 0.0, causal, False
    )[0]


def _cudnn_prefix_lm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, info: VarlenInfo,
                     varlen_fn: VarlenFn = _cudnn_fn) -> torch.Tensor:
    """PrefixLM as two ragged calls that only ever need top-left causal masking. q, k, v are
    [B, H, T, D]; returns [B, H, T, D].

    Call 1: every query, causal over its own example (right for response and padding rows).
    Call 2: instruction queries, non-causal over their example's instruction keys; these rows
    replace call 1's instruction rows."""
    B, _, T, _ = q.shape
    qf, kf, vf = _tokens_first(q, k, v)
    out = varlen_fn(qf, kf, vf, info.cu_k, info.cu_k, info.max_k, info.max_k, causal=True)
    if info.n_prefix:
        idx = info.perm[: info.n_prefix]
        q_pre, k_pre, v_pre = (t.index_select(0, idx) for t in (qf, kf, vf))
        pre = varlen_fn(q_pre, k_pre, v_pre, info.cu_q_prefix, info.cu_q_prefix, info.max_prefix, info.max_prefix,
                        causal=False)
        out = out.index_copy(0, idx, pre)
    return _heads_first(out, B, T)


FLEX_FA4_OPTIONS: dict[str, Any] = {"BACKEND": "FLASH"}  # flex's FlashAttention-4 (CuTe DSL) kernels


@functools.lru_cache(maxsize=1)  # facts of the process: asked for every batch's mask
def flex_fa4_available() -> bool:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        return False
    try:  # find_spec, not import: importing the CuTe DSL runtime takes seconds
        return importlib.util.find_spec("flash_attn.cute") is not None
    except ImportError:  # no flash_attn package at all
        return False


@functools.lru_cache(maxsize=1)  # facts of the process: asked for every batch's mask
def cudnn_available() -> bool:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        return False
    return torch.backends.cudnn.is_available() and hasattr(torch.ops.aten, "_cudnn_attention_forward")


@functools.lru_cache(maxsize=1)  # facts of the process: asked for every batch's mask
def varlen_available() -> bool:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def backend_unavailable(backend: str, device: torch.device) -> str | None:
    """Why `backend` cannot run on `device` (None if it can): the one check behind the mask
    builder's error and the trainer's start-up refusal."""
    if backend == "varlen" and not (device.type == "cuda" and varlen_available()):
        return "needs a CUDA GPU (sm80+) and torch.nn.attention.varlen (torch >= 2.9); use auto, flex or sdpa"
    if backend == "fa3" and not (device.type == "cuda" and fa3_available()):
        return "needs an sm90 GPU and the flash_attn_interface (FlashAttention 3) module; use auto or flex"
    if backend == "flex_fa4" and not (device.type == "cuda" and flex_fa4_available()):
        return ("needs an sm90+ GPU and the flash-attn-4 package (flash_attn.cute, CuTe DSL); "
                "use auto or flex")
    if backend == "cudnn" and not (device.type == "cuda" and cudnn_available()):
        return "needs a CUDA GPU (sm80+) with cuDNN attention; use auto, flex or sdpa"
    return None


@torch.compiler.disable  # per-batch host ints and data-dependent sizes: runs eagerly between compiled pieces
def _varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, info: VarlenInfo, kind: str) -> torch.Tensor:
    if kind == "cudnn":
        return _cudnn_prefix_lm(q, k, v, info)
    return _two_call_varlen(q, k, v, info, _fa3_fn if kind == "fa3" else _torch_varlen_fn())


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttnMask) -> torch.Tensor:
    """Scaled dot-product attention under a prepared mask. q: [B, H, Tq, D], k, v: [B, H, Tk, D]."""
    if mask.kind == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense)
    if mask.kind == "flex":
        if torch.compiler.is_compiling():  # already inside a compiled region (e.g. a compiled block)
            from torch.nn.attention.flex_attention import flex_attention

            return flex_attention(q, k, v, block_mask=mask.block_mask, kernel_options=mask.flex_options)
        return _compiled_flex()(q, k, v, block_mask=mask.block_mask, kernel_options=mask.flex_options)
    if mask.kind in ("fa3", "varlen", "cudnn"):
        assert mask.varlen is not None
        return _varlen_attention(q, k, v, mask.varlen, mask.kind)
    raise ValueError(f"unknown mask kind {mask.kind!r}")
