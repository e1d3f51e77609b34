"""The batched sampler draws from the filtered distribution, row by row, reproducibly."""

import math

import pytest
import torch

from hrm_text.infer.engine import Engine, Request, SamplingParams
from hrm_text.infer.sampling import draw_uniforms, sample


def _reference_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The filtered distribution, computed the plain way (one row)."""
    lg = logits.double() / temperature
    if top_k > 0:
        kth = torch.topk(lg, top_k).values[-1]
        lg = lg.masked_fill(lg < kth, -math.inf)
    probs = torch.softmax(lg, -1)
    sp, si = torch.sort(probs, descending=True)
    keep = (sp.cumsum(0) - sp) < top_p
    out = torch.zeros_like(probs).scatter_(0, si, sp * keep)
    return out / out.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (1.0, 8, 0.6)])
def test_frequencies_match_the_filtered_distribution(temperature, top_k, top_p):
    torch.manual_seed(0)
    V, n = 12, 40_000
    logits = torch.randn(V) * 2
    ref = _reference_probs(logits, temperature, top_k, top_p)
    toks = sample(logits.expand(n, V), [temperature] * n, [top_k] * n, [top_p] * n, torch.rand(n))
    freq = torch.bincount(toks, minlength=V).double() / n
    assert freq[ref == 0].sum() == 0  # filtered tokens never come out
    assert (freq - ref).abs().max() < 0.012, (freq, ref)  # ~4 standard errors at n = 40k


def test_rows_are_independent_and_uniform_edges_stay_in_range():
    V = 50
    logits = torch.randn(3, V)
    u = torch.tensor([0.0, 0.5, 1.0 - 1e-7])
    alone = [sample(logits[i : i + 1], [0.9], [0], [0.95], u[i : i + 1]) for i in range(3)]
    together = sample(logits, [0.9] * 3, [0] * 3, [0.95] * 3, u)
    assert torch.equal(torch.cat(alone), together)
    assert together[0] == logits[0].argmax()  # u = 0: the most likely token
    for i in range(3):  # the top end lands on a kept token, never past it
        assert _reference_probs(logits[i], 0.9, 0, 0.95)[together[i]] > 0


def test_seeded_draws_repeat_and_differ_by_seed():
    gens = lambda s: [torch.Generator().manual_seed(s), torch.Generator().manual_seed(s + 1)]  # noqa: E731
    assert torch.equal(draw_uniforms(gens(3), "cpu"), draw_uniforms(gens(3), "cpu"))
    assert not torch.equal(draw_uniforms(gens(3), "cpu"), draw_uniforms(gens(4), "cpu"))


def test_engine_seeded_request_repeats_whatever_shares_its_batch(trained_tiny_engine):
    eng = trained_tiny_engine
    seeded = Request([5, 6, 7], SamplingParams(max_tokens=6, temperature=1.0, top_p=0.9, seed=11), 1)
    alone = eng.generate([seeded])[0].token_ids
    others = [Request([8, 9], SamplingParams(max_tokens=5, temperature=1.0, seed=s), 10 + s) for s in range(3)]
    greedy = Request([5, 5], SamplingParams(max_tokens=4), 20)
    mixed = {r.request_id: r.token_ids for r in eng.generate([others[0], seeded, greedy, *others[1:]])}
    assert mixed[1] == alone and alone  # same tokens alone and in a mixed batch


@pytest.fixture(scope="module")
def trained_tiny_engine():
    from hrm_text.config import model_config
    from hrm_text.model.lm import HRMTextLM

    torch.manual_seed(0)
    model = HRMTextLM(model_config("tiny", vocab_size=64)).eval()
    return Engine(model, eoa_id=63, max_batch=4, max_len=32)
