"""The bf16 block projections with a per-micro-step weight cache and fused weight gradients
(train/projections.py) compute what `nn.Linear` under bf16 autocast computes: same outputs, same
gradients, the cache really used while set and gone after the step, state dict unchanged; and
`prepare_model` switches them on only where they are safe."""

import pytest
import torch
import torch.nn as nn

from hrm_text.config import TrainConfig, model_config
from hrm_text.model.lm import HRMTextLM
from hrm_text.train.projections import (Bf16Linear, cache_weights, cached_modules, convert_to_bf16_cached,
                                        drop_weight_cache, enable_fused_wgrad, enable_weight_cache)
from hrm_text.train.step import forward_backward, prepare_model


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128, bias=False), nn.SiLU(), nn.Linear(128, 64, bias=False))


def _three_calls(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The same weights used three times, as HRM's calls do; backward of a scalar of the result."""
    h = x
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(3):
            h = h + net(h).float()
    h.square().sum().backward()
    return h.detach()


@pytest.mark.parametrize("fuse", [False, True], ids=["autograd_sums", "fused_wgrad"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_cached_bf16_projections_match_autocast_linear(fuse, compiled):
    """Output and every gradient equal those of nn.Linear under bf16 autocast, to bf16 rounding:
    the weight gradient's GEMM reduces over the tokens in another operand order (and, fused, is
    not rounded to bf16 before the float32 sum), which moves single elements by one bf16 step. A
    call whose gradient were lost (the compiled backward dropping the accumulation) or a stale
    weight would move them by tens of percent."""
    ref, net = _mlp(), _mlp()
    assert convert_to_bf16_cached(net) == 2
    enable_weight_cache(net)
    enable_fused_wgrad(net, fuse)
    x = torch.randn(32, 64)
    want = _three_calls(ref, x)
    assert cache_weights(net) == 2
    got = _three_calls(torch.compile(net) if compiled else net, x)
    drop_weight_cache(net)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6), (got - want).abs().max()
    for a, b in zip(ref.parameters(), net.parameters()):
        assert b.grad is not None and b.grad.dtype == torch.float32
        assert rel(b.grad, a.grad) < 3e-3, rel(b.grad, a.grad)


def test_the_cache_is_what_the_projection_computes_with():
    """While set, the forward reads the cached bf16 copy (a changed copy changes the output), and
    after a drop the weight itself: a stale cache could not go unnoticed."""
    lin = nn.Linear(64, 32, bias=False)
    convert_to_bf16_cached(nn.Sequential(lin))
    x = torch.randn(8, 64)
    assert cache_weights(lin) == 0  # not enabled: nothing cached, plain linear
    enable_weight_cache(lin)
    assert cache_weights(lin) == 1
    assert lin.wcache.dtype == torch.bfloat16 and torch.equal(lin.wcache, lin.weight.detach().to(torch.bfloat16))
    with torch.no_grad():
        y = lin(x)
        lin.wcache.mul_(2)
        assert torch.allclose(lin(x).float(), 2 * y.float(), rtol=1e-2)
        drop_weight_cache(lin)
        assert lin.wcache is None
        assert torch.allclose(lin(x), x @ lin.weight.t())


def _batch():
    from hrm_text.data.batch import pack_rows

    g = torch.Generator().manual_seed(3)
    return pack_rows([[(torch.randint(8, 512, (int(n),), generator=g).tolist(),
                        torch.randint(8, 512, (40 - int(n),), generator=g).tolist()) for n in (12, 25, 7)]],
                     128).with_loss_index()


def _tiny() -> HRMTextLM:
    torch.manual_seed(0)
    return HRMTextLM(model_config("tiny", vocab_size=512, hidden_size=128, num_heads=2, head_dim=64))


def test_an_hrm_step_with_the_cache_equals_the_per_call_step():
    """A K = 5 step of a tiny HRM under bf16 autocast: same loss, same gradients with the cache
    and fused weight gradients as with the per-call casts; the cache is gone after the step and
    never in the state dict."""
    batch = _batch()
    denom = float(batch.loss_index.numel())

    def step(on: bool) -> tuple[float, dict[str, torch.Tensor], HRMTextLM]:
        model = _tiny()
        if on:
            convert_to_bf16_cached(model)
            enable_weight_cache(model)
            enable_fused_wgrad(model)
        out = forward_backward(model, batch, 5, denom, bf16=True)
        return float(out.loss_sum), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, model

    l0, g0, plain = step(False)
    l1, g1, model = step(True)
    assert l1 == l0
    assert g1.keys() == g0.keys() and any(".layers.0.mlp.down_proj" in n for n in g1)
    for n in g0:
        assert rel(g1[n], g0[n]) < 1e-2, (n, rel(g1[n], g0[n]))
    mods = cached_modules(model)
    assert len(mods) == 4 * sum(1 for _ in model.blocks())  # gqkv, o, gate_up, down of every block
    assert all(isinstance(m, Bf16Linear) and m.wcache is None for m in mods)
    assert model.state_dict().keys() == plain.state_dict().keys()


@pytest.mark.parametrize("setting", ["on", "off", "fp8", "fp32", "cpu", "sharded"])
def test_prepare_model_uses_the_bf16_cache_only_where_it_is_safe(monkeypatch, setting):
    """On by default for a bf16 run on one GPU; off when switched off, with float8 (its own
    projections), for float32 training, on CPU (no autocast step there) and under FSDP2."""
    from hrm_text.model.layers import Block
    from hrm_text.train import step

    monkeypatch.setattr(Block, "compile", lambda self, **kw: None)  # nothing to compile on this machine
    monkeypatch.setattr(step, "_sharded", lambda model: setting == "sharded")
    monkeypatch.setattr(step, "apply_fp8", lambda model, recipe: 0)
    t = TrainConfig(bf16_weight_cache=setting != "off", fp8=setting == "fp8",
                    dtype="fp32" if setting == "fp32" else "bf16")
    model = _tiny()
    prepare_model(model, t, torch.device("cpu" if setting == "cpu" else "cuda"))
    mods = cached_modules(model)
    if setting == "on":
        assert mods and all(m.cache_on and m.fuse_wgrad for m in mods)
        assert not any(isinstance(m, Bf16Linear) for m in [model.lm_head])  # the head stays
    else:
        assert mods == []


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_recomputed_calls_train_correctly_with_fused_wgrad(monkeypatch, compiled):
    """Activation checkpointing (train.recompute_calls) hands the backward a detached stand-in for
    each parameter (same storage, another tensor object): a gradient added into the stand-in's
    .grad would be lost (the gradients were 45-61% off before the fused op resolved it). The op
    adds into the parameter that owns the storage, so the recomputed run keeps the fused
    accumulation (as prepare_model sets it up) and gets the gradients of the step without
    recomputation and without the fused sums (compiled alike: compiled and eager bf16 steps
    round in different places, about 1% apart here)."""
    from hrm_text.model.layers import Block
    from hrm_text.train import step

    if not compiled:
        monkeypatch.setattr(Block, "compile", lambda self, **kw: None)
    monkeypatch.setattr(step, "_sharded", lambda model: False)
    batch = _batch()
    denom = float(batch.loss_index.numel())
    plain = _tiny()
    prepare_model(plain, TrainConfig(fused_wgrad=False, multi_kernel=False), torch.device("cuda"))
    forward_backward(plain, batch, 5, denom, bf16=True)
    want = {n: p.grad for n, p in plain.named_parameters()}

    torch._dynamo.reset()
    model = _tiny()
    # as the trainer sets it up on a GPU (compiled: the blocks' compiled backward gets the stand-in)
    prepare_model(model, TrainConfig(recompute_calls=2, multi_kernel=False), torch.device("cuda"))
    mods = cached_modules(model)
    assert mods and all(m.cache_on and m.fuse_wgrad for m in mods)
    forward_backward(model, batch, 5, denom, bf16=True, recompute_calls=2)
    for n, p in model.named_parameters():
        assert rel(p.grad, want[n]) < 1e-2, (n, rel(p.grad, want[n]))


def test_lora_trains_the_same_through_the_cached_base():
    """LoRA on a bf16 GPU run: the frozen base projections (inside peft's wrappers) run from the
    cache and get no gradient; the adapters stay plain and get the gradients of the uncached run."""
    pytest.importorskip("peft")
    from hrm_text.config import LoraConfig
    from hrm_text.model.lora import apply_lora

    batch = _batch()
    denom = float(batch.loss_index.numel())
    runs = []
    for on in (False, True):
        model = _tiny()
        apply_lora(model, LoraConfig(rank=8, alpha=16))
        with torch.no_grad():  # B = 0 at the start: give the adapters something to pass on
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
        if on:
            assert convert_to_bf16_cached(model) == 4 * len(model.blocks())
            enable_weight_cache(model)
            enable_fused_wgrad(model)
        out = forward_backward(model, batch, 5, denom, bf16=True)
        runs.append((float(out.loss_sum), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, model))
    (l0, g0, _), (l1, g1, model) = runs
    assert l1 == pytest.approx(l0, rel=1e-4)
    assert g1.keys() == g0.keys() and any("lora_A" in n for n in g1)
    for n in g0:
        assert rel(g1[n], g0[n]) < 1e-2, (n, rel(g1[n], g0[n]))
    bases = cached_modules(model)
    assert bases and all(not m.weight.requires_grad and m.weight.grad is None for m in bases)
