"""Engine(prefix_lm=False): prompts read causally, for models trained with a causal objective."""

from __future__ import annotations

import torch

from hrm_text.config import model_config
from hrm_text.data.batch import apply_objective, pack_rows
from hrm_text.infer.engine import Engine, Request, SamplingParams
from hrm_text.model.lm import HRMTextLM


def _full_recompute_greedy(model: HRMTextLM, prompt: list[int], n: int, objective: str) -> list[int]:
    """Reference: greedy decoding that re-runs the whole sequence with the objective's mask."""
    seq = list(prompt)
    for _ in range(n):
        b = apply_objective(pack_rows([[(seq[: len(prompt)], seq[len(prompt):] + [0])]], len(seq) + 1), objective)
        with torch.no_grad():
            logits = model(b.input_ids, b.position_ids, model.build_mask(b.doc_ids, b.is_prefix))
        seq.append(int(logits[0, len(seq) - 1, : model.cfg.vocab_size].argmax()))
    return seq[len(prompt):]


def test_causal_prefill_matches_a_causal_full_recompute() -> None:
    torch.manual_seed(0)
    model = HRMTextLM(model_config("tiny", vocab_size=64), attn_backend="sdpa").eval()
    prompt = [1, 9, 17, 33, 12, 40, 2]
    got = {}
    for prefix in (True, False):
        eng = Engine(model, eoa_id=63, max_batch=1, max_len=32, prefix_lm=prefix)
        got[prefix] = eng.generate([Request(prompt, SamplingParams(max_tokens=6))])[0].token_ids
    assert got[False] == _full_recompute_greedy(model, prompt, len(got[False]), "causal_response")
    assert got[True] == _full_recompute_greedy(model, prompt, len(got[True]), "prefix_lm")
    assert got[True] != got[False]  # the mask matters for this prompt: the test can tell them apart
