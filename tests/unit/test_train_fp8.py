"""The float8 projections (train/fp8.py) compute the same function as the plain linear, to float8
accuracy, in the output and in both gradients; the conversion keeps the state dict."""

import pytest
import torch
import torch.nn as nn

from hrm_text.config import model_config
from hrm_text.model.lm import HRMTextLM
from hrm_text.train.fp8 import Float8Linear, convert_to_float8, quantize_rows


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def test_quantize_rows_round_trip_and_scales():
    x = torch.randn(64, 128) * torch.logspace(-3, 3, 64)[:, None]  # rows of very different range
    q, s = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (64, 1)
    assert q.float().abs().amax(-1).min() > 400  # each row uses the format's range
    assert rel(q.float() * s, x) < 0.04  # e4m3: 3 mantissa bits


def _checked_scaled_mm(real):
    """The GPU kernels take A row-major and B column-major (the CPU one takes any layout)."""

    def mm(a, b, *args, **kw):
        assert a.stride(-1) == 1, f"A must be row-major, strides {a.stride()}"
        assert b.stride(0) == 1, f"B must be column-major, strides {b.stride()}"
        return real(a, b, *args, **kw)

    return mm


@pytest.mark.parametrize("seed", range(3))
def test_float8_linear_matches_float64(seed, monkeypatch):
    monkeypatch.setattr(torch, "_scaled_mm", _checked_scaled_mm(torch._scaled_mm))
    torch.manual_seed(seed)
    lin = nn.Linear(256, 384, bias=False)
    ref = nn.Linear(256, 384, bias=False).double()
    ref.weight.data.copy_(lin.weight.data.double())
    convert_to_float8(nn.Sequential(lin))
    assert isinstance(lin, Float8Linear)
    x = torch.randn(2, 64, 256)
    xr = x.double().requires_grad_()
    x.requires_grad_()
    gy = torch.randn(2, 64, 384)
    y, yr = lin(x), ref(xr)
    y.backward(gy.to(y.dtype))
    yr.backward(gy.double())
    assert y.dtype == torch.bfloat16 and y.shape == yr.shape
    assert rel(y, yr) < 0.06
    assert rel(x.grad, xr.grad) < 0.06
    assert rel(lin.weight.grad, ref.weight.grad) < 0.02  # weight gradient in bf16
    assert lin.weight.grad.dtype == torch.float32


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while running fn()."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_lowmem_recipe_saves_float8_inputs_and_keeps_the_gradients():
    """fused_lowmem: the same output and input gradient as fused; the weight gradient from the
    float8-rounded input (still close to float64); about half the saved bytes for x."""
    torch.manual_seed(0)
    x = torch.randn(128, 256, requires_grad=True)
    gy = torch.randn(128, 384)
    base = nn.Linear(256, 384, bias=False)
    out = {}
    for save_fp8 in (False, True):
        lin = nn.Linear(256, 384, bias=False)
        lin.weight.data.copy_(base.weight.data)
        convert_to_float8(nn.Sequential(lin), save_fp8=save_fp8)
        x.grad = None
        saved = _saved_bytes(lambda: lin(x).backward(gy.to(torch.bfloat16)))
        out[save_fp8] = (lin(x).detach(), x.grad.clone(), lin.weight.grad.clone(), saved)
    (y0, dx0, dw0, b0), (y1, dx1, dw1, b1) = out[False], out[True]
    assert torch.equal(y0, y1) and torch.equal(dx0, dx1)
    assert not torch.equal(dw0, dw1)  # the weight gradient did see the float8 input
    xq, xs = quantize_rows(x.detach())
    expect = (gy.to(torch.bfloat16).t() @ (xq.float() * xs).to(torch.bfloat16)).float()
    assert torch.equal(dw1, expect)
    ref = (gy.double().t() @ x.detach().double())
    assert rel(dw1, ref) < 0.06 and rel(dw0, ref) < 0.02
    x_bytes = 128 * 256
    assert b0 - b1 == x_bytes * 2 - (x_bytes + 128 * 4)  # bf16 x -> float8 x plus one float32 scale per row


def test_unsupported_shapes_fall_back_to_the_plain_linear():
    lin = nn.Linear(24, 40, bias=False)  # 24 is not a multiple of 16
    convert_to_float8(nn.Sequential(lin))
    x = torch.randn(3, 24)
    assert torch.equal(lin(x), nn.functional.linear(x, lin.weight))


def test_convert_keeps_the_state_dict_and_skips_the_head():
    model = HRMTextLM(model_config("tiny", vocab_size=512))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n = convert_to_float8(model)
    assert n == 4 * len(model.blocks())
    assert type(model.lm_head) is nn.Linear
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _tiny_batch():
    """Three examples packed into one 128-token row, with the loss index (vocabulary 512)."""
    from hrm_text.data.batch import pack_rows

    g = torch.Generator().manual_seed(0)
    rows = [[(torch.randint(8, 512, (int(p),), generator=g).tolist(), torch.randint(8, 512, (int(r),), generator=g).tolist())
             for p, r in ((20, 12), (9, 30), (25, 16))]]
    return pack_rows(rows, 128).with_loss_index()


@pytest.mark.parametrize("save_fp8", [False, True], ids=["fused", "fused_lowmem"])
def test_float8_model_step_stays_close_to_the_plain_step(save_fp8):
    """A whole HRM step (K = 5 recorded calls, fused loss) with float8 projections: the loss within
    2% of the plain step's, the gradients within float8 accuracy, and every gradient finite."""
    from hrm_text.train.step import forward_backward

    batch = _tiny_batch()
    results = []
    for fp8 in (False, True):
        torch.manual_seed(0)
        model = HRMTextLM(model_config("tiny", vocab_size=512, hidden_size=128, num_heads=2, head_dim=64))
        if fp8:
            assert convert_to_float8(model, save_fp8=save_fp8) == 4 * len(model.blocks())
        out = forward_backward(model, batch, 5, float(batch.loss_index.numel()), bf16=False)
        grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
        assert all(torch.isfinite(x).all() for x in grads)
        results.append((float(out.loss_sum), grads))
    (l0, g0), (l1, g1) = results
    assert abs(l1 - l0) / l0 < 0.02, (l0, l1)
    num = sum(float((a - b).norm() ** 2) for a, b in zip(g0, g1)) ** 0.5
    den = sum(float(a.norm() ** 2) for a in g0) ** 0.5
    assert 0 < num / den < 0.15, num / den  # differs (float8 ran) but only by float8 rounding


def test_lora_adapters_stay_plain_and_the_frozen_base_gets_no_weight_gradient():
    pytest.importorskip("peft")
    from hrm_text.config import LoraConfig
    from hrm_text.model.lora import apply_lora

    model = HRMTextLM(model_config("tiny", vocab_size=512, hidden_size=128, num_heads=2, head_dim=64))
    apply_lora(model, LoraConfig(rank=16, alpha=32))
    n = convert_to_float8(model)
    assert n == 4 * len(model.blocks())  # the four base projections of every block
    kinds = {type(m).__name__ for name, m in model.named_modules() if ".lora_" in name and isinstance(m, nn.Linear)}
    assert kinds == {"Linear"}
    base = next(m for m in model.modules() if isinstance(m, Float8Linear))
    assert not base.weight.requires_grad
    x = torch.randn(32, base.in_features, requires_grad=True)
    base(x).float().sum().backward()
    assert x.grad is not None and base.weight.grad is None


def _tiny_step(save_fp8: bool, cache: bool, fuse: bool, recompute_calls: int = 0):
    """One K = 5 HRM step of a tiny float8 model; returns (loss, {name: grad}, model)."""
    from hrm_text.train.projections import enable_fused_wgrad, enable_weight_cache
    from hrm_text.train.step import forward_backward

    batch = _tiny_batch()
    torch.manual_seed(0)
    model = HRMTextLM(model_config("tiny", vocab_size=512, hidden_size=128, num_heads=2, head_dim=64))
    convert_to_float8(model, save_fp8=save_fp8)
    enable_weight_cache(model, cache)
    enable_fused_wgrad(model, fuse)
    out = forward_backward(model, batch, 5, float(batch.loss_index.numel()), bf16=False, recompute_calls=recompute_calls)
    return float(out.loss_sum), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, model


@pytest.mark.parametrize("save_fp8", [False, True], ids=["fused", "fused_lowmem"])
def test_weight_cache_and_fused_wgrad_give_the_same_step(save_fp8):
    """Quantizing the weights once per micro-step and adding weight gradients straight into .grad
    change where the work happens, not the result: same loss, same gradients, every parameter
    that had a gradient still has one; the cache is gone after the step and never in the state dict."""
    l0, g0, _ = _tiny_step(save_fp8, cache=False, fuse=False)
    l1, g1, model = _tiny_step(save_fp8, cache=True, fuse=True)
    assert l1 == l0
    assert g1.keys() == g0.keys() and any(".layers.0.mlp.down_proj" in n for n in g1)
    for n in g0:
        assert torch.allclose(g1[n], g0[n], rtol=1e-5, atol=1e-7), (n, (g1[n] - g0[n]).abs().max())
    mods = [m for m in model.modules() if isinstance(m, Float8Linear)]
    assert mods and all(m.wcache is None and m.wcache_t is None for m in mods)  # dropped after the step
    assert not any("wcache" in k for k in model.state_dict())


@pytest.mark.parametrize("save_fp8", [False, True], ids=["fused", "fused_lowmem"])
def test_fused_wgrad_reaches_the_parameters_of_recomputed_calls(save_fp8):
    """train.recompute_calls: activation checkpointing hands the backward a detached stand-in for
    each weight. The fused accumulation must still land in the parameter's .grad: the same
    gradients as the step without recomputation and without the fused sums (they were 60.8% off
    when the stand-in's .grad took them)."""
    l0, g0, _ = _tiny_step(save_fp8, cache=False, fuse=False)
    l1, g1, _ = _tiny_step(save_fp8, cache=True, fuse=True, recompute_calls=2)
    assert l1 == l0
    assert g1.keys() == g0.keys()
    for n in g0:
        assert torch.allclose(g1[n], g0[n], rtol=1e-5, atol=1e-7), (n, (g1[n] - g0[n]).abs().max())


@pytest.mark.parametrize("save_fp8", [False, True], ids=["fused", "fused_lowmem"])
def test_weight_cache_and_fused_wgrad_train_like_the_per_call_step(save_fp8):
    """Several optimizer steps of two micro-steps each, as the trainer runs them (micro-steps add
    into .grad, then opt.step and zero_grad(set_to_none=True)): with the cache refreshed after each
    update and the fused gradients reset each step, the losses follow the per-call step's. A stale
    cache or gradients carried into the next step would move them by percents."""
    from hrm_text.data.batch import pack_rows
    from hrm_text.train.projections import enable_fused_wgrad, enable_weight_cache
    from hrm_text.train.optim import AdamAtan2
    from hrm_text.train.step import forward_backward

    g = torch.Generator().manual_seed(3)
    batches = [pack_rows([[(torch.randint(8, 512, (int(n),), generator=g).tolist(),
                            torch.randint(8, 512, (40 - int(n),), generator=g).tolist()) for n in (12, 25, 7)]], 128)
               .with_loss_index() for _ in range(2)]  # the same two every step: the loss must fall

    def train(on: bool) -> list[float]:
        torch.manual_seed(0)
        model = HRMTextLM(model_config("tiny", vocab_size=512, hidden_size=128, num_heads=2, head_dim=64))
        convert_to_float8(model, save_fp8=save_fp8)
        enable_weight_cache(model, on)
        enable_fused_wgrad(model, on)
        opt = AdamAtan2(model.parameters(), lr=1e-2, weight_decay=0.1)
        denom = float(sum(b.loss_index.numel() for b in batches))
        losses = []
        for _ in range(5):
            losses.append(sum(float(forward_backward(model, b, 5, denom, bf16=False).loss_sum) for b in batches) / denom)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return losses

    off, on = train(False), train(True)
    assert off[-1] < 0.8 * off[0], off  # training moves the loss: stale copies would show
    for a, b in zip(off, on):
        assert abs(b - a) / a < 1e-4, (off, on)


def test_weight_cache_is_the_weights_quantized_both_ways():
    from hrm_text.train.projections import cache_weights, enable_weight_cache

    lin = nn.Linear(64, 32, bias=False)
    convert_to_float8(nn.Sequential(lin))
    assert cache_weights(lin) == 0  # not enabled: nothing cached
    enable_weight_cache(lin)
    assert cache_weights(lin) == 1
    wq, ws = quantize_rows(lin.weight.detach())
    wtq, wts = quantize_rows(lin.weight.detach().t().contiguous())
    assert torch.equal(lin.wcache.float(), wq.float()) and torch.equal(lin.wcache_s, ws)
    assert torch.equal(lin.wcache_t.float(), wtq.float()) and torch.equal(lin.wcache_ts, wts)
    assert lin.wcache_t.is_contiguous() and lin.wcache_t.shape == (64, 32)


def _mlp() -> nn.Sequential:
    """Two bias-free projections (float8-sized), seeded."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128, bias=False), nn.SiLU(), nn.Linear(128, 64, bias=False))


def test_fused_wgrad_under_compile_reaches_the_parameters():
    """The compiled backward must still run the accumulation (it returns nothing, so a compiler
    could drop it) and hand it the parameter itself: gradients equal those of eager autograd."""
    from hrm_text.train.projections import enable_fused_wgrad

    ref, fused = _mlp(), _mlp()
    convert_to_float8(ref)
    convert_to_float8(fused)
    enable_fused_wgrad(fused)
    compiled = torch.compile(fused)
    x = torch.randn(32, 64)
    for net in (ref, compiled):
        h = x
        for _ in range(3):  # the same weights used three times, as HRM's calls do
            h = h + net(h).float()
        h.square().sum().backward()
    for a, b in zip(ref.parameters(), fused.parameters()):
        assert b.grad is not None
        assert torch.allclose(b.grad, a.grad, rtol=1e-4, atol=1e-6), (b.grad - a.grad).abs().max()


def test_compiled_modules_follow_the_cache_being_set_and_dropped():
    """cache_weights/drop_weight_cache write the buffers directly (no nn.Module.__setattr__, which
    the compiler also watches): a compiled module must still switch between the cached and the
    per-call path, and after a drop compute with the weights as they are now."""
    from hrm_text.train.projections import cache_weights, drop_weight_cache, enable_weight_cache

    ref, net = _mlp(), _mlp()
    convert_to_float8(ref)
    convert_to_float8(net)
    enable_weight_cache(net)
    for m in net:
        if isinstance(m, nn.Linear):
            m.compile()
    x = torch.randn(32, 64)
    with torch.no_grad():
        cache_weights(net)
        cached = net(x)
        drop_weight_cache(net)
        assert torch.equal(net(x), cached)
        for p, q in zip(net.parameters(), ref.parameters()):
            p.mul_(2)
            q.mul_(2)
        assert torch.equal(net(x), ref(x))  # dropped: the new weights, not a stale copy
        cache_weights(net)
        assert torch.equal(net(x), ref(x))


def test_fused_wgrad_refuses_a_tensor_that_is_not_the_parameter():
    from hrm_text.train.projections import accumulate_wgrad

    w = nn.Parameter(torch.randn(8, 4))
    with pytest.raises(RuntimeError, match="needs the parameter itself"):
        accumulate_wgrad(torch.randn(16, 8), torch.randn(16, 4), w * 2)
    accumulate_wgrad(torch.randn(16, 8), torch.randn(16, 4), w)
    assert w.grad is not None and w.grad.shape == (8, 4)
