"""The engine's pipelined continuous batching against a cache-free greedy reference.

Greedy steps are pipelined (the device feeds each step's argmax into the next step before the host
reads it; a row that finished has one extra step computed and discarded). These tests make rows
finish at different steps (max tokens, end-of-answer, context limit), refill them with waiting
prompts, and mix in a sampled request (which switches the engine to synchronous steps), and check
every greedy result against recomputing the whole sequence with the PrefixLM mask at each token.
"""

from __future__ import annotations

import torch

from hrm_text.config import model_config
from hrm_text.infer.engine import Engine, Request, SamplingParams
from hrm_text.model.lm import HRMTextLM

VOCAB = 300


def _model() -> HRMTextLM:
    torch.manual_seed(0)
    return HRMTextLM(model_config("tiny", vocab_size=VOCAB)).eval()


@torch.no_grad()
def reference_greedy(model: HRMTextLM, prompt: list[int], n: int, eoa: int = -1, max_len: int = 10**9) -> list[int]:
    """No cache: the full sequence each step, prompt bidirectional, response causal."""
    seq, out = list(prompt), []
    while len(out) < n and len(seq) < max_len:
        ids = torch.tensor([seq])
        is_prefix = torch.tensor([[i < len(prompt) for i in range(len(seq))]])
        mask = model.build_mask(torch.zeros_like(ids), is_prefix)
        logits = model(ids, torch.arange(len(seq))[None], mask)[0, -1, :VOCAB]
        tok = int(logits.argmax())
        if tok == eoa:
            break
        out.append(tok)
        seq.append(tok)
    return out


PROMPTS = [[5, 17, 42, 99, 7, 3], [1, 2, 3], [9] * 11, [4, 4], [8, 7, 6, 5, 4], [200, 100, 50]]
MAX_TOKENS = [7, 3, 9, 1, 5, 8]


def test_pipelined_continuous_batching_matches_reference():
    model = _model()
    want = [reference_greedy(model, p, n) for p, n in zip(PROMPTS, MAX_TOKENS)]
    for max_batch in (1, 2, 4):
        eng = Engine(model, eoa_id=VOCAB - 1, max_batch=max_batch, max_len=64)
        res = eng.generate([Request(p, SamplingParams(max_tokens=n), i) for i, (p, n) in enumerate(zip(PROMPTS, MAX_TOKENS))])
        assert [r.token_ids for r in res] == want, f"max_batch={max_batch}"
        assert all(r.finish_reason == "length" for r in res)


def test_end_of_answer_mid_batch_and_refill():
    model = _model()
    free = reference_greedy(model, PROMPTS[0], 9)
    eoa = free[4]  # this prompt stops at its 5th token; the others may stop wherever eoa shows up
    want = [reference_greedy(model, p, 9, eoa=eoa) for p in PROMPTS]
    assert want[0] == free[:4]
    eng = Engine(model, eoa_id=eoa, max_batch=2, max_len=64)
    res = eng.generate([Request(p, SamplingParams(max_tokens=9), i) for i, p in enumerate(PROMPTS)])
    assert [r.token_ids for r in res] == want
    assert res[0].finish_reason == "stop"


def test_context_limit_finishes_with_length():
    model = _model()
    max_len = 16
    eng = Engine(model, eoa_id=VOCAB - 1, max_batch=2, max_len=max_len)
    prompts = [[9] * 11, [3] * 5, [7] * 14]
    res = eng.generate([Request(p, SamplingParams(max_tokens=50), i) for i, p in enumerate(prompts)])
    for p, r in zip(prompts, res):
        assert r.finish_reason == "length"
        assert r.token_ids == reference_greedy(model, p, 50)[: len(r.token_ids)]
        assert len(p) + len(r.token_ids) == max_len  # the context is used to its last slot


def test_sampled_request_mixed_in_keeps_greedy_rows_exact():
    model = _model()
    want = [reference_greedy(model, p, n) for p, n in zip(PROMPTS, MAX_TOKENS)]
    eng = Engine(model, eoa_id=VOCAB - 1, max_batch=3, max_len=64)
    reqs = [Request(p, SamplingParams(max_tokens=n), i) for i, (p, n) in enumerate(zip(PROMPTS, MAX_TOKENS))]
    reqs.insert(2, Request([11, 12, 13], SamplingParams(max_tokens=6, temperature=1.0, seed=3), 99))
    res = {r.request_id: r for r in eng.generate(reqs)}
    assert [res[i].token_ids for i in range(len(PROMPTS))] == want
    assert len(res[99].token_ids) == 6
    # the seeded sample is reproducible, in another batch composition too
    alone = Engine(model, eoa_id=VOCAB - 1, max_batch=1, max_len=64).generate([reqs[2]])[0]
    assert alone.token_ids == res[99].token_ids


def test_streaming_callbacks_see_every_token_in_order():
    model = _model()
    seen: dict[int, list[int]] = {0: [], 1: []}
    reqs = [
        Request(PROMPTS[i], SamplingParams(max_tokens=MAX_TOKENS[i]), i, on_token=seen[i].append) for i in (0, 1)
    ]
    res = Engine(model, eoa_id=VOCAB - 1, max_batch=2, max_len=64).generate(reqs)
    assert seen[0] == res[0].token_ids and seen[1] == res[1].token_ids


def test_prompt_writes_touch_only_the_prompt_slots_of_their_rows():
    from hrm_text.model.kv_cache import StaticKVCache

    cache = StaticKVCache(num_slots=2, batch_size=3, num_heads=2, max_len=8, head_dim=4)
    for t in cache.k + cache.v:
        t.normal_()
    before_k = [t.clone() for t in cache.k]
    k, v = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4)  # two prompts of 5 slots into rows 2 and 0
    pos = torch.arange(5)[None].expand(2, 5)
    rows = torch.tensor([2, 0])
    got_k, got_v = cache.prompt_writes().view(1, pos, rows).update(k, v)
    assert got_k is k and got_v is v  # attention runs over the new keys only
    assert torch.equal(cache.k[1][2, :, :5], k[0]) and torch.equal(cache.v[1][0, :, :5], v[1])
    assert torch.equal(cache.k[1][1], before_k[1][1])  # row 1 untouched
    assert torch.equal(cache.k[1][:, :, 5:], before_k[1][:, :, 5:])  # slots past the prompt untouched
    assert torch.equal(cache.k[0], before_k[0])  # other layer slot untouched
