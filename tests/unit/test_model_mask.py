"""The PrefixLM mask equals a brute-force per-example construction on random packings."""

import random

import pytest
import torch

from hrm_text.data.batch import pack_rows
from hrm_text.model.attention import _fa3_varlen, build_prefix_lm_mask, dense_prefix_lm_mask, varlen_info


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


def random_rows(rng: random.Random, T: int, B: int):
    rows = []
    for _ in range(B):
        row, used = [], 0
        while True:
            p, r = rng.randint(1, 6), rng.randint(1, 6)
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
def test_fa3_two_call_decomposition_matches_dense(seed):
    """The fa3 backend's split (prompt non-causal, response causal bottom-right) equals the mask."""
    rng = random.Random(seed)
    T = 20
    rows = random_rows(rng, T, 2) + EDGE_ROWS[:1]
    rows = [r for r in rows if sum(len(a) + len(b) for a, b in r) <= T]
    batch = pack_rows(rows, T)
    B, H, D = len(rows), 2, 8
    q, k, v = (torch.randn(B, H, T, D, dtype=torch.float64) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense_prefix_lm_mask(batch.doc_ids, batch.is_prefix))
    got = _fa3_varlen(q, k, v, varlen_info(batch.doc_ids, batch.is_prefix), varlen_fn=_naive_varlen)
    assert torch.allclose(got, ref, atol=1e-10)
