"""The PrefixLM mask equals a brute-force per-example construction on random packings."""

import random
import warnings

import pytest
import torch

from hrm_text.data.batch import pack_rows
from hrm_text.model.attention import _cudnn_prefix_lm, _two_call_varlen, build_prefix_lm_mask, dense_prefix_lm_mask, varlen_info


def brute_force_mask(rows, T):
    """Mask built example by example from the definition: bidirectional prompt, causal response."""
    B = len(rows)
    m = torch.zeros(B, T, T, dtype=torch.bool)
    for b, row in enumerate(rows):
        cur = 0
        for inst, resp in row:
            p, n = len(inst), len(inst) + len(resp)
            for q in range(n):
                for k in range(n):
                    if k <= q or (q < p and k < p):
                        m[b, cur + q, cur + k] = True
            cur += n
        for q in range(cur, T):  # padding: causal among itself
            m[b, q, cur : q + 1] = True
    return m


def random_rows(rng: random.Random, T: int, B: int, max_len: int = 6):
    rows = []
    for _ in range(B):
        row, used = [], 0
        while True:
            p, r = rng.randint(1, max_len), rng.randint(1, max_len)
            if used + p + r > T or rng.random() < 0.15:
                break
            row.append(([rng.randint(3, 50) for _ in range(p)], [rng.randint(3, 50) for _ in range(r)]))
            used += p + r
        if not row:
            row.append(([5] * max(1, T - 1 - rng.randint(0, 2)), [6]))
        rows.append(row)
    return rows


EDGE_ROWS = [
    [([1, 2, 3], [9])],  # single example, 1-token response (only <eoa>), padding tail
    [([1] * 15, [9])],  # example filling the whole row
    [([1, 2], [3, 9]), ([4], [9]), ([5, 6, 7], [8, 8, 9])],  # several examples, 1-token responses
    [([1] * 8, [2] * 8)],  # one example, exactly the row
]


@pytest.mark.parametrize("seed", range(5))
def test_dense_mask_matches_brute_force_random(seed):
    rng = random.Random(seed)
    T = 24
    rows = random_rows(rng, T, 3)
    batch = pack_rows(rows, T)
    got = dense_prefix_lm_mask(batch.doc_ids, batch.is_prefix)[:, 0]
    assert torch.equal(got, brute_force_mask(rows, T))


def test_dense_mask_matches_brute_force_edge_cases():
    T = 16
    batch = pack_rows(EDGE_ROWS, T)
    got = build_prefix_lm_mask(batch.doc_ids, batch.is_prefix, "sdpa").dense[:, 0]
    assert torch.equal(got, brute_force_mask(EDGE_ROWS, T))
    assert got.any(-1).all(), "every query must see at least one key"


def test_mask_is_not_causal_or_full():
    """Guard against a mask that is trivially causal or fully bidirectional."""
    batch = pack_rows([[([1, 2, 3], [4, 5])]], 5)
    m = dense_prefix_lm_mask(batch.doc_ids, batch.is_prefix)[0, 0]
    assert m[0, 2]  # prompt token sees a later prompt token
    assert not m[3, 4]  # response token does not see the future
    assert not m[2, 3]  # prompt does not see the response


def _naive_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal):
    """Reference varlen attention with FlashAttention's bottom-right causal alignment."""
    out = torch.zeros_like(q)
    for i in range(len(cu_q) - 1):
        qs, qe, ks, ke = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        if qe == qs:
            continue
        qi, ki, vi = q[qs:qe].transpose(0, 1), k[ks:ke].transpose(0, 1), v[ks:ke].transpose(0, 1)
        s = qi @ ki.transpose(-1, -2) / qi.shape[-1] ** 0.5
        if causal:
            nq, nk = qe - qs, ke - ks
            allowed = torch.arange(nk)[None, :] <= torch.arange(nq)[:, None] + (nk - nq)
            s = s.masked_fill(~allowed, float("-inf"))
        out[qs:qe] = (s.softmax(-1) @ vi).transpose(0, 1)
    return out


@pytest.mark.parametrize("seed", range(3))
def test_varlen_two_call_decomposition_matches_dense(seed):
    """The varlen/fa3 backends' split (prompt non-causal, response causal bottom-right) equals the
    mask, in the output and in the gradients of q, k and v."""
    rng = random.Random(seed)
    T = 20
    rows = random_rows(rng, T, 2) + EDGE_ROWS[:1]
    rows = [r for r in rows if sum(len(a) + len(b) for a, b in r) <= T]
    batch = pack_rows(rows, T)
    B, H, D = len(rows), 2, 8
    q, k, v = (torch.randn(B, H, T, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
    g = torch.randn(B, H, T, D, dtype=torch.float64)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense_prefix_lm_mask(batch.doc_ids, batch.is_prefix))
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    got = _two_call_varlen(q, k, v, varlen_info(batch.doc_ids, batch.is_prefix), varlen_fn=_naive_varlen)
    got_grads = torch.autograd.grad(got, (q, k, v), g)
    assert torch.allclose(got, ref, atol=1e-10)
    for a, b in zip(got_grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-10)


def _naive_varlen_top_left(q, k, v, cu_q, cu_k, max_q, max_k, causal):
    """Reference ragged attention with top-left causal alignment (query i sees keys 0..i), which is
    what cuDNN's causal mask does; empty sequences are refused, as a strict kernel would."""
    assert len(cu_q) == len(cu_k)
    assert bool((cu_q[1:] > cu_q[:-1]).all()) and bool((cu_k[1:] > cu_k[:-1]).all()), "empty sequence"
    out = torch.zeros_like(q)
    for i in range(len(cu_q) - 1):
        qs, qe, ks, ke = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        assert qe - qs <= max_q and ke - ks <= max_k
        qi, ki, vi = q[qs:qe].transpose(0, 1), k[ks:ke].transpose(0, 1), v[ks:ke].transpose(0, 1)
        s = qi @ ki.transpose(-1, -2) / qi.shape[-1] ** 0.5
        if causal:
            s = s.masked_fill(torch.arange(ke - ks)[None, :] > torch.arange(qe - qs)[:, None], float("-inf"))
        out[qs:qe] = (s.softmax(-1) @ vi).transpose(0, 1)
    return out


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("no_instruction", [False, True])
def test_cudnn_decomposition_matches_dense(seed, no_instruction):
    """The cudnn backend's split (every query causal over its example, then instruction queries
    non-causal over their instruction) equals the mask, in the output and in q, k, v's gradients,
    with a kernel that only knows top-left causal alignment and refuses empty sequences."""
    rng = random.Random(seed)
    T = 20
    rows = random_rows(rng, T, 2) + EDGE_ROWS[:1]
    rows = [r for r in rows if sum(len(a) + len(b) for a, b in r) <= T]
    batch = pack_rows(rows, T)
    is_prefix = torch.zeros_like(batch.is_prefix) if no_instruction else batch.is_prefix
    B, H, D = len(rows), 2, 8
    q, k, v = (torch.randn(B, H, T, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
    g = torch.randn(B, H, T, D, dtype=torch.float64)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense_prefix_lm_mask(batch.doc_ids, is_prefix))
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    got = _cudnn_prefix_lm(q, k, v, varlen_info(batch.doc_ids, is_prefix), varlen_fn=_naive_varlen_top_left)
    got_grads = torch.autograd.grad(got, (q, k, v), g)
    assert torch.allclose(got, ref, atol=1e-10)
    for a, b in zip(got_grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-10)


def test_varlen_without_instruction_tokens():
    """A batch with no instruction token (full-text causal objective) takes only the causal call."""
    batch = pack_rows([[([1, 2, 3], [4, 5])]], 8)
    is_prefix = torch.zeros_like(batch.is_prefix)
    info = varlen_info(batch.doc_ids, is_prefix)
    assert info.n_prefix == 0
    q, k, v = (torch.randn(1, 2, 8, 4, dtype=torch.float64) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense_prefix_lm_mask(batch.doc_ids, is_prefix))
    assert torch.allclose(_two_call_varlen(q, k, v, info, varlen_fn=_naive_varlen), ref, atol=1e-10)


@pytest.mark.parametrize("seed", range(3))
def test_flex_block_tables_match_create_block_mask(seed):
    """The block tables built from the dense mask equal flex's own create_block_mask (same blocks
    skipped, partial and full), and flex attention under them equals the dense-mask attention."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from hrm_text.model.attention import FLEX_BLOCK, _flex_block_mask

    rng = random.Random(seed)
    T, B = 3 * FLEX_BLOCK, 2
    rows = []
    for _ in range(B):
        row, used = [], 0
        while rng.random() > 0.1:
            p, r = rng.randint(1, 150), rng.randint(1, 150)
            if used + p + r > T:
                break
            row.append(([5] * p, [6] * r))
            used += p + r
        rows.append(row or [([5] * (T - 1), [6])])
    batch = pack_rows(rows, T)
    got = _flex_block_mask(batch.doc_ids, batch.is_prefix)
    doc, pre = batch.doc_ids.to(torch.int32), batch.is_prefix
    ref = create_block_mask(lambda b, h, q, k: (doc[b, q] == doc[b, k]) & ((k <= q) | (pre[b, q] & pre[b, k])),
                            B, None, T, T, device="cpu", _compile=False)
    for name in ("kv_num_blocks", "full_kv_num_blocks", "q_num_blocks", "full_q_num_blocks"):
        assert torch.equal(getattr(got, name), getattr(ref, name)), name
    assert torch.equal(got.to_dense(), ref.to_dense())
    q, k, v = (torch.randn(B, 2, T, 8, dtype=torch.float64) for _ in range(3))
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense_prefix_lm_mask(batch.doc_ids, batch.is_prefix))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flex without compile (CPU) warns: the unfused reference path
        out = flex_attention(q, k, v, block_mask=got)
    assert torch.allclose(out, dense, atol=1e-10)


def test_flex_fa4_is_refused_clearly_without_its_kernels(monkeypatch):
    """attn_backend=flex_fa4 (flex on FlashAttention-4) names what it needs where it cannot run, in
    the mask builder and in the trainer's start-up check; where it can, its mask is flex's with
    BACKEND=FLASH, and attention() hands those options to flex."""
    import hrm_text.model.attention as attn

    batch = pack_rows([[([5] * 3, [6] * 2)]], 8)
    why = attn.backend_unavailable("flex_fa4", torch.device("cpu"))
    assert why is not None and "flash-attn-4" in why and "sm90" in why
    with pytest.raises(RuntimeError, match="attn_backend=flex_fa4 needs an sm90"):
        build_prefix_lm_mask(batch.doc_ids, batch.is_prefix, "flex_fa4")
    assert build_prefix_lm_mask(batch.doc_ids, batch.is_prefix, "flex").flex_options is None

    monkeypatch.setattr(attn, "backend_unavailable", lambda backend, device: None)
    mask = build_prefix_lm_mask(batch.doc_ids, batch.is_prefix, "flex_fa4")
    assert (mask.kind, mask.flex_options) == ("flex", {"BACKEND": "FLASH"})
    seen = {}
    monkeypatch.setattr(attn, "_compiled_flex", lambda: lambda q, k, v, **kw: seen.update(kw) or q)
    attn.attention(*(torch.zeros(1, 1, 8, 4) for _ in range(3)), mask)
    assert seen["kernel_options"] == {"BACKEND": "FLASH"} and seen["block_mask"] is mask.block_mask


@pytest.mark.parametrize("seed", range(4))
def test_query_bounds_are_the_prefix_lm_rule_on_packed_rows(seed):
    """Each query's [lo, hi] key interval (flex's mask_mod) is exactly the PrefixLM rule on rows
    packed by data/batch.py, padding included."""
    from hrm_text.model.attention import query_bounds

    T = 200
    batch = pack_rows(random_rows(random.Random(seed), T, 3, max_len=40), T)
    lo, hi = query_bounds(batch.doc_ids, batch.is_prefix)
    k = torch.arange(T)
    got = (k >= lo[..., None]) & (k <= hi[..., None])
    assert torch.equal(got, dense_prefix_lm_mask(batch.doc_ids, batch.is_prefix)[:, 0])


@pytest.mark.parametrize("doc,pre", [
    ([0, 0, 1, 1, 0, 0, -1, -1], [1, 0, 1, 0, 0, 0, 0, 0]),  # example 0 in two runs
    ([0, 0, -1, -1, 1, 1, -1, -1], [1, 0, 0, 0, 1, 0, 0, 0]),  # padding inside the row
    ([0, 0, 0, 1, 1, 1, -1, -1], [1, 0, 1, 1, 0, 0, 0, 0]),  # instruction after the response
])
def test_query_bounds_refuse_rows_not_packed_as_batch_py_does(doc, pre):
    """Where the interval form would differ from the rule, the mask builder stops with a message
    (on CPU at once; on CUDA at the next synchronisation) instead of masking wrong."""
    from hrm_text.model.attention import query_bounds

    with pytest.raises(RuntimeError, match="rows must be packed"):
        query_bounds(torch.tensor([doc], dtype=torch.int32), torch.tensor([pre], dtype=torch.bool))
