"""Our engine's greedy generations equal transformers' `HrmTextForCausalLM.generate` token for token.

transformers is an implementation nobody here wrote; the export folder is the bridge. We compare
against transformers one prompt at a time (its batched generate left-pads, which shifts positions)
and run our engine both unbatched and batched with fewer rows than prompts, so continuous batching
refills finished rows with waiting prompts mid-run.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hrm_text.infer.engine import Engine, Request, SamplingParams  # noqa: E402
from hrm_text.infer.export import export_hf  # noqa: E402
from hrm_text.checkpoint.loading import load_model  # noqa: E402

PROMPTS = [("direct", "12+30="), ("cot", "99+1="), ("direct", "what is 40+2? "), ("synth,cot", "3+4="), ("direct", "1")]
NEW = 10


@pytest.fixture(scope="module")
def setup(trained_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf_export") / "model"
    export_hf(trained_tiny, out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="sdpa", dtype=torch.float32).eval()
    loaded = load_model(trained_tiny)  # our checkpoint, EMA weights: the same weights export wrote
    tok = loaded.tokenizer
    prompts = [tok.encode_prompt(instr, cond) for cond, instr in PROMPTS]
    return hf, loaded, tok, prompts


def hf_greedy(hf, prompt: list[int], eos: int | None) -> list[int]:
    ids = torch.tensor([prompt])
    saved = hf.generation_config.eos_token_id
    hf.generation_config.eos_token_id = eos  # None: generate exactly NEW tokens
    try:
        with torch.no_grad():
            out = hf.generate(input_ids=ids, token_type_ids=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=NEW, pad_token_id=0)
    finally:
        hf.generation_config.eos_token_id = saved
    new = out[0, len(prompt):].tolist()
    if eos is not None and eos in new:  # our results exclude the <eoa> that ended them
        new = new[: new.index(eos)]
    return new


def ours(loaded, prompts, eoa: int, max_batch: int) -> list[list[int]]:
    eng = Engine(loaded.model, eoa_id=eoa, max_batch=max_batch, max_len=64)
    reqs = [Request(p, SamplingParams(max_tokens=NEW), i) for i, p in enumerate(prompts)]
    return [r.token_ids for r in eng.generate(reqs)]


@pytest.mark.parametrize("stop_at_eoa", [True, False], ids=["eoa", "full-length"])
def test_engine_greedy_equals_transformers(setup, stop_at_eoa):
    hf, loaded, tok, prompts = setup
    eos = tok.eoa_id if stop_at_eoa else None
    ref = [hf_greedy(hf, p, eos) for p in prompts]
    if not stop_at_eoa:
        assert all(len(r) == NEW for r in ref)
    eoa = tok.eoa_id if stop_at_eoa else -1  # -1: never stop early, compare NEW tokens of every prompt
    unbatched = [ours(loaded, [p], eoa, max_batch=1)[0] for p in prompts]
    batched = ours(loaded, prompts, eoa, max_batch=3)  # 5 prompts on 3 rows: rows are refilled
    assert unbatched == ref
    assert batched == ref


def test_prefix_lm_matters_for_transformers(setup):
    """Sanity of the reference: without token_type_ids transformers runs causally and differs."""
    hf, _, _, prompts = setup
    p = max(prompts, key=len)
    ids = torch.tensor([p])
    with torch.no_grad():
        a = hf(input_ids=ids, token_type_ids=torch.ones_like(ids)).logits
        b = hf(input_ids=ids).logits
    assert (a - b).abs().max().item() > 1e-3
