"""Interop with transformers' `hrm_text`, an implementation nobody here wrote
(docs/ARCHITECTURE.md#transformers-interop)."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hrm_text.config import model_config  # noqa: E402
from hrm_text.model.attention import build_prefix_lm_mask  # noqa: E402
from hrm_text.model.hf_adapter import (  # noqa: E402
    from_hf_config,
    from_hf_state_dict,
    load_hf_folder,
    save_hf_folder,
)
from hrm_text.model.lm import HRMTextLM  # noqa: E402

CONFIGS = {
    "tiny": lambda: model_config("tiny", vocab_size=300),
    "xl_width_2_layers": lambda: model_config("XL", n_layers=2, vocab_size=512),
}


def prefix_inputs(vocab, prompt_lens, T):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (len(prompt_lens), T), generator=g)
    tt = torch.zeros(len(prompt_lens), T, dtype=torch.long)
    for b, p in enumerate(prompt_lens):
        tt[b, :p] = 1
    return ids, tt


def our_logits(model, ids, tt):
    B, T = ids.shape
    pos = torch.arange(T)[None].expand(B, T)
    mask = build_prefix_lm_mask(torch.zeros(B, T, dtype=torch.int32), tt.bool(), "sdpa")
    with torch.no_grad():
        return model(ids, pos, mask)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_export_loads_in_transformers_with_same_logits(name, tmp_path):
    cfg = CONFIGS[name]()
    model = HRMTextLM(cfg).eval()
    save_hf_folder(model, tmp_path)
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True, attn_implementation="sdpa")
    assert type(hf).__name__ == "HrmTextForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    ids, tt = prefix_inputs(cfg.padded_vocab_size, [5, 9, 1], 14)
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=tt).logits
        causal = hf(input_ids=ids).logits
    ours = our_logits(model, ids, tt)
    assert (ours - ref).abs().max().item() <= 1e-4
    # the PrefixLM mask really matters: without token_type_ids transformers runs causally
    assert (ours - causal).abs().max().item() > 1e-3


@pytest.mark.parametrize("name", list(CONFIGS))
def test_random_transformers_model_imports_with_same_logits(name, tmp_path):
    cfg_ours = CONFIGS[name]()
    hf_cfg = transformers.HrmTextConfig(
        vocab_size=cfg_ours.padded_vocab_size,
        hidden_size=cfg_ours.hidden_size,
        intermediate_size=cfg_ours.intermediate_size,
        num_hidden_layers=cfg_ours.half_layers,
        num_attention_heads=cfg_ours.num_heads,
        head_dim=cfg_ours.head_dim,
        initializer_range=cfg_ours.hidden_size**-0.5,
        rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
        max_position_embeddings=512,
    )
    torch.manual_seed(3)
    hf = transformers.HrmTextForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # transformers initialises z_L_init to zeros; make it a real vector
        hf.model.z_L_init.normal_()
    # (a) in-memory, split projection names
    cfg = from_hf_config(json.loads(hf_cfg.to_json_string()))
    ours = HRMTextLM(cfg, init=False).eval()
    missing, unexpected = ours.load_state_dict(from_hf_state_dict(hf.state_dict()), strict=False)
    assert not missing and not unexpected
    ids, tt = prefix_inputs(cfg.padded_vocab_size, [3, 7], 11)
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=tt).logits
    assert (our_logits(ours, ids, tt) - ref).abs().max().item() <= 1e-4
    # (b) through save_pretrained's on-disk (fused) format
    hf.save_pretrained(tmp_path)
    loaded = load_hf_folder(tmp_path).eval()
    assert (our_logits(loaded, ids, tt) - ref).abs().max().item() <= 1e-4


def test_export_import_round_trip_is_bit_exact(tmp_path):
    model = HRMTextLM(model_config("tiny", vocab_size=300))
    save_hf_folder(model, tmp_path)
    back = load_hf_folder(tmp_path)
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_greedy_generation_matches_transformers(tmp_path):
    """Greedy continuation by plain argmax loops over our full forward equals transformers' generate."""
    cfg = model_config("tiny", vocab_size=300)
    model = HRMTextLM(cfg).eval()
    save_hf_folder(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    prompt = torch.tensor([[5, 17, 42, 99, 7, 3]])
    p = prompt.shape[1]
    tt = torch.ones_like(prompt)
    with torch.no_grad():
        ref = hf.generate(input_ids=prompt, token_type_ids=tt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    seq = prompt
    for _ in range(8):
        T = seq.shape[1]
        is_prefix = torch.zeros(1, T, dtype=torch.bool)
        is_prefix[:, :p] = True
        logits = our_logits(model, seq, is_prefix.long())
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(seq, ref)
