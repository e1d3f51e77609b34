"""The step's speed options refuse, before any work and with the setting's name, what this
machine cannot run (CPU here: no float8 GEMMs for training, no varlen or FA3 kernels), and switch
the float8 step savings on only where they are safe."""

import pytest
import torch

from hrm_text.config import ConfigError, TrainConfig, model_config
from hrm_text.data.batch import pack_rows
from hrm_text.model.lm import HRMTextLM
from hrm_text.train.step import apply_fp8, forward_backward, prepare_model


def _model() -> HRMTextLM:
    return HRMTextLM(model_config("tiny", vocab_size=512))


@pytest.mark.parametrize("backend", ["varlen", "fa3"])
def test_gpu_only_attention_backends_are_refused_on_cpu(backend):
    with pytest.raises(ConfigError, match=f"train.attn_backend={backend}"):
        prepare_model(_model(), TrainConfig(attn_backend=backend), torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without float8 GEMMs")
def test_fp8_is_refused_without_a_float8_gpu():
    with pytest.raises(ConfigError, match="train.fp8=true needs a GPU"):
        prepare_model(_model(), TrainConfig(fp8=True), torch.device("cpu"))


def test_unknown_fp8_recipe_is_refused_by_name():
    with pytest.raises(ConfigError, match="fp8_recipe='bogus'"):
        apply_fp8(_model(), "bogus")


@pytest.mark.parametrize("sharded", [False, True])
def test_fp8_step_savings_are_on_for_one_process_and_off_under_fsdp(monkeypatch, sharded):
    """The weight cache and the fused weight gradients bypass per-call paths FSDP2 relies on."""
    from hrm_text.train import step
    from hrm_text.train.fp8 import FUSED_RECIPES, convert_to_float8, float8_modules

    monkeypatch.setattr(step, "apply_fp8", lambda model, recipe: convert_to_float8(model, **FUSED_RECIPES[recipe]))
    monkeypatch.setattr(step, "_sharded", lambda model: sharded)
    for on in (True, False):
        model = _model()
        prepare_model(model, TrainConfig(fp8=True, fp8_weight_cache=on, fused_wgrad=on), torch.device("cpu"))
        mods = float8_modules(model)
        assert mods and all(m.cache_on == (on and not sharded) and m.fuse_wgrad == (on and not sharded) for m in mods)
    # recomputed stack calls: the fused op finds the parameter behind checkpointing's stand-in, so both stay on
    model = _model()
    prepare_model(model, TrainConfig(fp8=True, recompute_calls=1), torch.device("cpu"))
    assert all(m.cache_on == (not sharded) and m.fuse_wgrad == (not sharded) for m in float8_modules(model))


def test_a_plain_model_is_not_sharded():
    from hrm_text.train.step import _sharded

    assert not _sharded(_model())


@pytest.mark.parametrize("multi_kernel", [True, False])
def test_blocks_are_compiled_with_multi_kernel_as_configured(monkeypatch, multi_kernel):
    """On CUDA every block is compiled, with inductor's multi-kernel where train.multi_kernel asks
    (the row reductions are wider than inductor's whole-row limit); on CPU nothing is compiled."""
    from hrm_text.model.layers import Block

    seen = []
    monkeypatch.setattr(Block, "compile", lambda self, **kw: seen.append(kw))
    model = _model()
    prepare_model(model, TrainConfig(multi_kernel=multi_kernel), torch.device("cpu"))
    assert seen == []
    prepare_model(model, TrainConfig(multi_kernel=multi_kernel), torch.device("cuda"))
    assert len(seen) == len(list(model.blocks())) > 0
    want = {"triton.multi_kernel": 1, "fx_graph_cache": False} if multi_kernel else None
    assert all(kw == {"options": want} for kw in seen)


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.5])
def test_activation_memory_budget_outside_0_1_is_refused_by_name(budget):
    with pytest.raises(ConfigError, match=f"train.activation_memory_budget must be in \\(0, 1\\] \\(got {budget}\\)"):
        prepare_model(_model(), TrainConfig(activation_memory_budget=budget), torch.device("cpu"))


def test_activation_memory_budget_reaches_the_partitioner(monkeypatch):
    """The compiler's min-cut partitioner reads it when the blocks compile (measured on a GPU:
    docs/PERFORMANCE.md, tenth session); 1.0 leaves the compiler's own setting alone."""
    import torch._functorch.config as functorch_config

    monkeypatch.setattr(functorch_config, "activation_memory_budget", 1.0)
    prepare_model(_model(), TrainConfig(activation_memory_budget=1.0), torch.device("cpu"))
    assert functorch_config.activation_memory_budget == 1.0
    prepare_model(_model(), TrainConfig(activation_memory_budget=0.7), torch.device("cpu"))
    assert functorch_config.activation_memory_budget == 0.7


def test_activation_budget_turns_on_where_the_bf16_step_would_not_fit():
    """The recipe's XL rows (12,288 tokens) need about 88 GB in bf16: on an 80 GB card the run takes
    the measured budget 0.8 by itself; on 141 GB, with float8, or with any memory setting the user
    chose, nothing changes."""
    from hrm_text.config import load_config
    from hrm_text.train.batching import apply_memory_defaults

    def run(device_gb, *over):
        cfg = load_config(None, ["model.preset=XL", "data.tokens_per_rank=12288", *over])
        return apply_memory_defaults(cfg, device_gb * 1e9 if device_gb else None, 1), cfg.train.activation_memory_budget

    note, budget = run(85.5)  # an H100 80GB (81,559 MiB)
    assert budget == 0.8 and "train.activation_memory_budget=0.8" in note and "83 GiB" in note and "80 GiB" in note
    note, budget = run(85.5, "train.bf16_states=false")  # the estimate knows float32 states take 3 GB more
    assert budget == 0.8 and "86 GiB" in note
    assert run(150.1) == (None, 1.0)  # an H200 holds it
    assert run(None) == (None, 1.0)  # a CPU
    assert run(85.5, "train.fp8=true") == (None, 1.0)  # float8 fits on its own (71 GB)
    assert run(85.5, "train.activation_memory_budget=1.0") == (None, 1.0)  # set by the user: kept
    assert run(85.5, "train.recompute_calls=2") == (None, 1.0)
    assert run(85.5, "train.compile=false") == (None, 1.0)  # the budget acts through the compiler
    assert run(85.5, "data.tokens_per_rank=8192") == (None, 1.0)  # 8,192-token rows fit (69 GB with the bf16 weight cache)
    assert run(85.5, "train.lora.rank=8") == (None, 1.0)  # adapters only: the estimate does not apply


def _grads_and_states(model: HRMTextLM, autocast: bool) -> tuple[torch.Tensor, torch.dtype, torch.Tensor]:
    """Loss, the core's output dtype and every gradient of one training micro-step (the trainer's
    `forward_backward`; bf16 autocast or none) on fixed packed rows."""
    g = torch.Generator().manual_seed(1)
    batch = pack_rows([[(torch.randint(8, 512, (32,), generator=g).tolist(), torch.randint(8, 512, (64,), generator=g).tolist())
                        for _ in range(2)]], 192).with_loss_index()
    model.zero_grad()
    out = forward_backward(model, batch, 5, float(batch.loss_index.numel()), bf16=autocast)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        h = model.hidden(batch.input_ids, batch.position_ids, model.build_mask(batch.doc_ids, batch.is_prefix), 5)
    return out.loss_sum, h.dtype, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_bf16_states_hold_the_residual_stream_in_bf16_under_autocast_only(dtype):
    """train.bf16_states: states in bf16 under bf16 autocast (the stacks' output too), float32
    outside autocast, and off for an fp32 run; gradients stay within bf16 rounding of float32's."""
    torch.manual_seed(0)
    model = HRMTextLM(model_config("tiny", vocab_size=512), attn_backend="sdpa")
    prepare_model(model, TrainConfig(bf16_states=True, dtype=dtype), torch.device("cpu"))
    assert model.model.autocast_states == (dtype == "bf16")
    loss32, out32, grad32 = _grads_and_states(model, autocast=False)
    assert out32 == torch.float32
    if dtype == "fp32":
        return
    loss16, out16, grad16 = _grads_and_states(model, autocast=True)
    assert out16 == torch.bfloat16
    model.model.autocast_states = False
    loss_ref, out_ref, grad_ref = _grads_and_states(model, autocast=True)  # bf16 compute, float32 states
    assert out_ref == torch.float32
    # measured here: 1.2% (bf16 states) and 0.75% (float32 states) relative gradient error
    assert (grad16 - grad32).norm() / grad32.norm() < 0.03
    assert (grad_ref - grad32).norm() / grad32.norm() < 0.03
    assert abs(loss16 - loss32) / loss32 < 1e-3
    assert not torch.equal(grad16, grad_ref)  # the setting changes the arithmetic
