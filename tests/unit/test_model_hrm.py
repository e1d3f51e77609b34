"""HRM recurrence, deep credit assignment, presets and FLOPs accounting (docs/ARCHITECTURE.md#model)."""

import math

import pytest
import torch

from hrm_text.config import ConfigError, model_config
from hrm_text.data.batch import pack_rows
from hrm_text.model.flops import count_params, run_flops, train_flops_per_token
from hrm_text.model.lm import HRMTextLM

SPEC_PARAMS = {"B": 0.30e9, "L": 0.69e9, "XL": 1.18e9, "XXL": 3.3e9, "XXL_wide": 3.1e9}

# Call order for H2 L3 is L L L H L L L H; docs/ARCHITECTURE.md#deep-credit-assignment:
# K=2 records the final L and H,
# K=5 records both H calls and the last 3 L calls.
EXPECTED_RECORDED = {
    2: {6, 7},
    3: {3, 6, 7},
    4: {3, 5, 6, 7},
    5: {3, 4, 5, 6, 7},
}


def tiny(**kw):
    return model_config("tiny", vocab_size=64, **kw)


def small_batch():
    return pack_rows([[([1, 2, 3], [4, 5, 6]), ([7, 8], [9])], [([10] * 6, [11] * 4)]], 12)


def record_calls(model: HRMTextLM, batch, K):
    """Run a training forward/backward and report, per stack call, whether its output was part of
    the autograd graph and whether a non-zero gradient reached it."""
    outputs = []

    def hook(_mod, _inp, out):
        outputs.append(out)
        if out.requires_grad:
            out.retain_grad()

    handles = [s.register_forward_hook(hook) for s in model.model.stacks().values()]
    out = model.loss(batch, bp_steps=K)
    out.loss_sum.backward()
    for h in handles:
        h.remove()
    return [(o.requires_grad, o.grad is not None and o.grad.abs().sum().item() > 0) for o in outputs]


@pytest.mark.parametrize("K", [2, 3, 4, 5])
def test_exactly_the_spec_calls_receive_gradients(K):
    model = HRMTextLM(tiny())
    calls = record_calls(model, small_batch(), K)
    assert len(calls) == 8
    recorded = {i for i, (req, got) in enumerate(calls) if req}
    got_grad = {i for i, (req, got) in enumerate(calls) if got}
    assert recorded == EXPECTED_RECORDED[K]
    assert got_grad == EXPECTED_RECORDED[K]


def test_unrecorded_calls_pass_no_gradient_to_their_input():
    """At K=2 nothing recorded reads the embedding, so the embedding gets no gradient; at K=5 the
    first H call reads it, so it does."""
    model = HRMTextLM(tiny())
    model.loss(small_batch(), bp_steps=2).loss_sum.backward()
    g = model.model.embed_tokens.weight.grad
    assert g is None or g.abs().sum() == 0
    model.zero_grad(set_to_none=True)
    model.loss(small_batch(), bp_steps=5).loss_sum.backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


def test_z_L_init_is_fixed_and_not_trained():
    model = HRMTextLM(tiny())
    names = {n for n, _ in model.named_parameters()}
    assert "model.z_L_init" not in names
    assert "model.z_L_init" in model.state_dict()
    z = model.model.z_L_init
    assert 0.5 < z.std().item() < 1.5 and z.abs().max() <= 3.0 + 1e-6


def test_init_statistics_follow_lecun_truncated_normal():
    cfg = model_config("tiny", vocab_size=512, hidden_size=256, num_heads=4)
    model = HRMTextLM(cfg)
    blk = model.blocks()[0]
    d, inter = cfg.hidden_size, cfg.intermediate_size
    w = blk.attn.gqkv_proj.weight
    # the truncated distribution's std is the requested one (std compensated for the clipping)
    assert abs(w.std().item() * math.sqrt(d) - 1.0) < 0.03
    assert w.abs().max().item() <= 3.05 / math.sqrt(d)
    assert abs(blk.mlp.down_proj.weight.std().item() * math.sqrt(inter) - 1.0) < 0.03
    assert abs(model.model.embed_tokens.weight.std().item() * math.sqrt(d) - 1.0) < 0.03


def test_edge_case_rows_give_finite_outputs_and_gradients():
    rows = [
        [([1, 2, 3], [9])],  # 1-token response, padding tail
        [([1] * 15, [9])],  # fills the row
        [([1, 2], [3, 9]), ([4], [9]), ([5, 6, 7], [8, 8, 9])],
    ]
    batch = pack_rows(rows, 16)
    for arch in ("hrm", "transformer", "looped", "trm", "rins"):
        model = HRMTextLM(tiny(arch=arch))
        out = model.loss(batch, bp_steps=5)
        assert torch.isfinite(out.loss_sum)
        out.loss_sum.backward()
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), (arch, name)
        assert out.num_tokens.item() == 1 + 1 + (2 + 1 + 3)


def test_loss_is_response_only():
    """Changing a prompt token of one example changes the loss only through attention; changing a
    label-free padding token changes nothing."""
    model = HRMTextLM(tiny()).eval()
    batch = pack_rows([[([1, 2, 3], [4, 5])]], 8)
    base = model.loss(batch).loss_sum
    batch.input_ids[0, 6:] = 17  # padding
    assert torch.equal(model.loss(batch).loss_sum, base)
    assert batch.num_loss_tokens == 2


def test_packed_examples_do_not_interact():
    """An example's logits are the same alone or packed next to another example."""
    model = HRMTextLM(tiny()).eval()
    a, b = ([1, 2, 3], [4, 5]), ([6, 7], [8, 9, 10])
    alone = pack_rows([[b]], 5)
    packed = pack_rows([[a, b]], 12)
    with torch.no_grad():
        la = model(alone.input_ids, alone.position_ids, model.build_mask(alone.doc_ids, alone.is_prefix))
        lp = model(packed.input_ids, packed.position_ids, model.build_mask(packed.doc_ids, packed.is_prefix))
    assert torch.allclose(la[0, :5], lp[0, 5:10], atol=1e-5)


@pytest.mark.parametrize("preset", list(SPEC_PARAMS))
def test_preset_param_counts_match_spec(preset):
    total = count_params(model_config(preset)).total
    assert abs(total - SPEC_PARAMS[preset]) / SPEC_PARAMS[preset] < 0.02


def test_xl_non_embedding_and_tiny_sizes():
    assert abs(count_params(model_config("XL")).non_embedding - 0.98e9) / 0.98e9 < 0.02
    assert 1e6 <= count_params(model_config("tiny")).total <= 3e6
    assert model_config("XL").intermediate_size == 4096


def test_count_params_matches_module():
    for arch in ("hrm", "transformer", "trm", "rins"):
        cfg = tiny(arch=arch)
        model = HRMTextLM(cfg)
        assert count_params(cfg).total == sum(p.numel() for p in model.parameters())


def test_xl_flops_for_60b_tokens():
    cfg = model_config("XL")
    assert 0.95e21 <= run_flops(cfg, 60e9) <= 1.1e21
    assert 0.95e21 <= train_flops_per_token(cfg, 5) * 60e9 <= 1.1e21
    # dense transformer obeys 6 N D
    t = model_config("XL", arch="transformer")
    assert train_flops_per_token(t) == 6 * count_params(t).non_embedding


def test_flops_grow_with_K():
    cfg = model_config("XL")
    f = [train_flops_per_token(cfg, K) for K in range(2, 6)]
    assert f == sorted(f) and len(set(f)) == 4


def test_bad_config_messages_name_key_and_allowed_values():
    with pytest.raises(ConfigError, match="arch"):
        model_config("tiny", arch="mamba")
    with pytest.raises(ConfigError, match="unknown preset"):
        model_config("XS")
    with pytest.raises(ConfigError, match="even"):
        model_config("tiny", n_layers=3)
    with pytest.raises(ConfigError, match="unknown key model.hiden_size"):
        model_config("tiny", hiden_size=3)


def test_model_info_cli():
    from typer.testing import CliRunner

    from hrm_text.cli import app

    r = CliRunner().invoke(app, ["model-info", "--preset", "XL"])
    assert r.exit_code == 0, r.output
    assert "1,182.8M total" in r.output and "L L L H L L L H" in r.output
    r = CliRunner().invoke(app, ["model-info", "--preset", "XS"])
    assert r.exit_code == 2 and "unknown preset" in r.output
