"""AdamAtan2 against a hand-written float64 reference; EMA arithmetic, swap and state round trip."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from hrm_text.train import optim
from hrm_text.train.optim import AdamAtan2, ModelEMA, _step_single


def reference_adam_atan2(p0, grads, lr, b1, b2, wd):
    """docs/ARCHITECTURE.md#optimiser-and-schedules written out literally, one scalar formula per line,
    in float64."""
    p = p0.clone().double()
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g.double()
        p = p * (1 - lr * wd)
        m = m + (1 - b1) * (g - m)  # lerp(m, g, 1 - b1)
        v = b2 * v + (1 - b2) * g * g
        bc1 = 1 - b1**t
        bc2 = 1 - b2**t
        p = p - lr / bc1 * torch.atan2(m, torch.sqrt(v) / math.sqrt(bc2))
    return p, m, v


def _grads(shape, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # mix of scales, exact zeros and sign flips: atan2 must handle m = 0 and v = 0 without eps
    gs = []
    for i in range(n):
        g = torch.randn(shape, generator=gen, dtype=torch.float64) * 10.0 ** (i % 3 - 1)
        g[..., 0] = 0.0
        gs.append(g)
    return gs


@pytest.mark.parametrize("foreach", [False, True])
def test_matches_reference_float64(foreach):
    torch.manual_seed(0)
    shapes = [(7, 5), (11,), (3, 4, 2)]
    params = [nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in shapes]
    init = [p.detach().clone() for p in params]
    grads = [_grads(s, 6, seed=i) for i, s in enumerate(shapes)]
    lr, b1, b2, wd = 3e-2, 0.9, 0.95, 0.1
    opt = AdamAtan2(params, lr=lr, betas=(b1, b2), weight_decay=wd, foreach=foreach)
    for t in range(6):
        for p, gs in zip(params, grads):
            p.grad = gs[t].clone()
        opt.step()
    for p, p0, gs in zip(params, init, grads):
        ref_p, ref_m, ref_v = reference_adam_atan2(p0, gs, lr, b1, b2, wd)
        torch.testing.assert_close(p.detach(), ref_p, rtol=1e-13, atol=1e-15)
        st = opt.state[p]
        assert st["exp_avg"].dtype == torch.float64
        torch.testing.assert_close(st["exp_avg"], ref_m, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(st["exp_avg_sq"], ref_v, rtol=1e-13, atol=1e-15)
        assert int(st["step"]) == 6


def test_float32_params_close_to_reference_and_state_fp32():
    torch.manual_seed(1)
    p = nn.Parameter(torch.randn(64, 32))
    p0 = p.detach().clone()
    gs = _grads((64, 32), 5, seed=3)
    opt = AdamAtan2([p], lr=1e-2)
    for g in gs:
        p.grad = g.float()
        opt.step()
    ref_p, _, _ = reference_adam_atan2(p0, [g.float() for g in gs], 1e-2, 0.9, 0.95, 0.1)
    torch.testing.assert_close(p.detach().double(), ref_p, rtol=1e-5, atol=1e-6)
    assert opt.state[p]["exp_avg"].dtype == torch.float32


def test_foreach_bitwise_equals_single_fp32():
    torch.manual_seed(2)
    a = [nn.Parameter(torch.randn(s)) for s in [(5, 3), (8,), (2, 2, 2)]]
    b = [nn.Parameter(x.detach().clone()) for x in a]
    oa = AdamAtan2(a, lr=1e-3, foreach=False)
    ob = AdamAtan2(b, lr=1e-3, foreach=True)
    for t in range(4):
        for x, y in zip(a, b):
            g = torch.randn_like(x)
            x.grad, y.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_bf16_params_keep_fp32_moments():
    p = nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = AdamAtan2([p], lr=0.1, weight_decay=0.0)
    p.grad = torch.full((4,), 1e-3, dtype=torch.bfloat16)
    opt.step()
    assert p.dtype == torch.bfloat16
    assert opt.state[p]["exp_avg"].dtype == torch.float32
    # step 1: m = (1-b1) g, sqrt(v)/sqrt(bc2) = |g|, so p -= lr/(1-b1) * atan(1-b1)
    expected = 1.0 - 0.1 / 0.1 * math.atan(0.1)
    assert abs(float(p.detach()[0]) - expected) < 4e-3


def test_first_step_is_bounded_and_scale_invariant():
    """Step 1 moves each coordinate by lr/(1-b1) * atan(1-b1) whatever |g| is (no eps); 0 where g = 0."""
    for scale in (1e-30, 1.0, 1e20):
        p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
        opt = AdamAtan2([p], lr=1.0, weight_decay=0.0)
        p.grad = torch.tensor([scale, -scale, 0.0], dtype=torch.float64)
        opt.step()
        step = 1.0 / 0.1 * math.atan(0.1)
        torch.testing.assert_close(p.detach(), torch.tensor([-step, step, 0.0], dtype=torch.float64))


def test_weight_decay_applied_before_update_and_params_without_grad_untouched():
    p = nn.Parameter(torch.full((2,), 2.0, dtype=torch.float64))
    q = nn.Parameter(torch.full((2,), 5.0, dtype=torch.float64))
    opt = AdamAtan2([p, q], lr=0.5, weight_decay=0.2)
    p.grad = torch.zeros(2, dtype=torch.float64)  # atan2(0, 0) = 0: only the decay acts
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((2,), 2.0 * (1 - 0.5 * 0.2), dtype=torch.float64))
    assert torch.equal(q.detach(), torch.full((2,), 5.0, dtype=torch.float64))
    assert q not in opt.state


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(3)
    p1 = nn.Parameter(torch.randn(6))
    o1 = AdamAtan2([p1], lr=1e-2)
    gs = [torch.randn(6) for _ in range(6)]
    for g in gs[:3]:
        p1.grad = g.clone()
        o1.step()
    p2 = nn.Parameter(p1.detach().clone())
    o2 = AdamAtan2([p2], lr=1e-2)
    o2.load_state_dict(copy.deepcopy(o1.state_dict()))
    for g in gs[3:]:
        p1.grad, p2.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    assert torch.equal(p1, p2)


def test_invalid_hyperparameters():
    p = [nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError):
        AdamAtan2(p, lr=-1.0)
    with pytest.raises(ValueError):
        AdamAtan2(p, betas=(1.0, 0.9))
    with pytest.raises(ValueError):
        AdamAtan2(p, weight_decay=-0.1)


# ----------------------------------------------------------------------------------------------
# EMA


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_ema_update_formula():
    net = _net()
    ema = ModelEMA(net, decay=0.9)
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)
    for n, p in net.named_parameters():
        torch.testing.assert_close(ema.shadow[n], 0.9 * start[n] + 0.1 * p.detach())
    assert ema.num_updates == 1


class _TorchKernels:
    """Stands in for train/optim_kernels.py on CPU: the same bookkeeping, torch arithmetic; takes
    every other parameter, as the real one leaves DTensor shards to the foreach path."""

    def __init__(self) -> None:
        self.calls = 0
        self.taken: set[int] = set()

    def supported(self, p, m):
        take = self.calls % 2 == 0
        self.calls += 1
        if take:
            self.taken.add(id(p))
        return take

    @staticmethod
    def shadow_supported(p, s):
        return s is not None

    @staticmethod
    def adam_atan2_step(params, exp_avgs, exp_avg_sqs, *, shadows, ema_weight, **kw):
        _step_single(params, exp_avgs, exp_avg_sqs, **kw)
        for p, s in zip(params, shadows):
            if s is not None:
                s.lerp_(p.detach(), ema_weight)


@pytest.mark.parametrize("warmup", [False, True])  # warmup: lerp weights >= 0.5 at first
def test_step_with_ema_equals_step_then_update(monkeypatch, warmup):
    """The EMA folded into the optimizer's pass gives what step() + ema.update() give: every shadow
    averaged exactly once per step, the kernel's and the others (including a parameter without a
    gradient, which the optimizer skips and the EMA still averages)."""
    nets = [_net(), _net()]
    opts = [AdamAtan2(n.parameters(), lr=1e-2) for n in nets]
    emas = [ModelEMA(n, decay=0.6, warmup=warmup) for n in nets]
    kernels = _TorchKernels()
    monkeypatch.setattr(optim, "_fused_kernels", lambda fused, device: kernels)
    for step in range(4):
        for n in nets:
            torch.manual_seed(step)
            n(torch.randn(5, 3)).square().sum().backward()
            n[2].bias.grad = None  # no gradient this step
        opts[0].step()
        emas[0].update(nets[0])
        opts[1].step_with_ema(emas[1], nets[1])
        for n, o in zip(nets, opts):
            o.zero_grad(set_to_none=True)
    assert kernels.taken, "the stand-in kernel took no parameter"
    for (na, a), (nb, b) in zip(nets[0].named_parameters(), nets[1].named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(emas[0].shadow[na], emas[1].shadow[nb], rtol=1e-6, atol=1e-7)
    assert emas[1].num_updates == emas[0].num_updates == 4


def test_ema_warmup_decay():
    ema = ModelEMA(_net(), decay=0.9999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)
    ema.num_updates = 10**9
    assert ema.current_decay() == pytest.approx(0.9999)
    assert ModelEMA(_net(), decay=0.5).current_decay() == 0.5


def test_ema_swap_restores_training_weights_bitwise():
    net = _net()
    ema = ModelEMA(net, decay=0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    ema.update(net)
    trained = {n: p.detach().clone() for n, p in net.named_parameters()}
    x = torch.randn(5, 3)
    with ema.swap(net):
        for n, p in net.named_parameters():
            assert torch.equal(p, ema.shadow[n])
        y_ema = net(x)
    for n, p in net.named_parameters():
        assert torch.equal(p, trained[n])
    assert not torch.allclose(y_ema, net(x))


def test_ema_swap_restores_on_exception():
    net = _net()
    ema = ModelEMA(net)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    before = net[0].weight.detach().clone()
    with pytest.raises(RuntimeError):
        with ema.swap(net):
            raise RuntimeError("boom")
    assert torch.equal(net[0].weight, before)


def test_ema_state_dict_round_trip_and_copy_to():
    net = _net()
    ema = ModelEMA(net, decay=0.7)
    with torch.no_grad():
        net[2].bias.add_(2.0)
    ema.update(net)
    other = ModelEMA(_net(), decay=0.7)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1
    for n in ema.shadow:
        assert torch.equal(ema.shadow[n], other.shadow[n])
    fresh = _net()
    other.copy_to(fresh)
    assert torch.equal(fresh[2].bias, ema.shadow["2.bias"])
    with pytest.raises(KeyError):
        other.load_state_dict({"shadow.nope": torch.zeros(1)})


def test_ema_names_ignore_compile_wrapper_prefix():
    net = _net()
    wrapper = nn.Module()
    wrapper._orig_mod = net  # what torch.compile's OptimizedModule looks like to named_parameters
    ema = ModelEMA(wrapper)
    assert set(ema.shadow) == {n for n, _ in net.named_parameters()}
    ema.update(net)  # same canonical names: interchangeable


# ----------------------------------------------------------------------------------------------
# LR and deep-credit-assignment schedules

from hrm_text.config import TrainConfig, model_config  # noqa: E402
from hrm_text.train.schedule import bp_steps_at, lr_at  # noqa: E402


def test_lr_warmup_then_constant():
    cfg = TrainConfig(lr=2.2e-4, lr_warmup_steps=2000)
    assert lr_at(1, cfg, 10_000) == pytest.approx(2.2e-4 / 2000, rel=1e-12)
    assert lr_at(1000, cfg, 10_000) == pytest.approx(1.1e-4, rel=1e-12)
    assert lr_at(2000, cfg, 10_000) == 2.2e-4
    assert lr_at(9_999_999, cfg, 10_000) == 2.2e-4
    assert lr_at(5, TrainConfig(lr=1e-3, lr_warmup_steps=0), 10) == 1e-3


def test_lr_cosine_to_floor():
    cfg = TrainConfig(lr=1.0, lr_warmup_steps=10, lr_schedule="cosine", lr_min_ratio=0.1)
    assert lr_at(5, cfg, 110) == pytest.approx(0.5)
    assert lr_at(10, cfg, 110) == pytest.approx(1.0)
    assert lr_at(60, cfg, 110) == pytest.approx(0.55)
    assert lr_at(35, cfg, 110) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_at(110, cfg, 110) == pytest.approx(0.1)
    assert lr_at(500, cfg, 110) == pytest.approx(0.1)
    values = [lr_at(s, cfg, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_bp_steps_exact_values():
    cfg = TrainConfig(bp_min_steps=2, bp_max_steps=5, bp_warmup_ratio=0.2)
    # ratio * total = 200: K = 2 + int(step / 200 * 3)
    expected = {0: 2, 1: 2, 66: 2, 67: 3, 133: 3, 134: 4, 199: 4, 200: 5, 1000: 5, 5000: 5}
    assert {s: bp_steps_at(s, 1000, cfg, "hrm") for s in expected} == expected
    assert all(
        bp_steps_at(s, 1000, cfg, "trm") == 2 + int(min(1.0, s / (0.2 * 1000)) * 3) for s in range(0, 1001)
    )


def test_bp_steps_full_from_start_and_guards():
    cfg = TrainConfig(bp_min_steps=2, bp_max_steps=5, bp_warmup_ratio=0.2)
    assert bp_steps_at(1, 1000, TrainConfig(bp_min_steps=2, bp_max_steps=5, full_bp_from_start=True), "hrm") == 5
    assert bp_steps_at(1, 0, cfg, "hrm") == 5  # unknown length: no warm-up to follow
    assert bp_steps_at(1, 1000, TrainConfig(bp_warmup_ratio=0.0, bp_max_steps=5), "hrm") == 5
    same = TrainConfig(bp_min_steps=3, bp_max_steps=3)
    assert {bp_steps_at(s, 100, same, "hrm") for s in range(0, 101)} == {3}


def test_bp_steps_of_the_baselines_are_their_fixed_counts():
    cfg = TrainConfig(looped_bp_steps=3, rins_bp_steps=6)
    assert {bp_steps_at(s, 1000, cfg, "looped") for s in (1, 100, 1000)} == {3}
    assert {bp_steps_at(s, 1000, cfg, "rins") for s in (1, 100, 1000)} == {6}
    assert bp_steps_at(1, 1000, cfg, "transformer") == 1
