"""CUDA-only checks of the training step's speed pieces (run on the device machine:
`bash benchmarks/gpu_tests.sh`). Each compares the fast path with the plain one on random data."""

from __future__ import annotations

import pytest
import torch

from hrm_text.config import Config, model_config
from hrm_text.data.batch import pack_rows
from hrm_text.model.lm import HRMTextLM
from hrm_text.train.fp8 import FUSED_RECIPES
from hrm_text.train.optim import AdamAtan2, ModelEMA
from hrm_text.train.step import forward_backward, prepare_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _batch(T: int, vocab: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    rows, used = [], 0
    while True:
        p, r = int(torch.randint(3, 40, (), generator=g)), int(torch.randint(1, 40, (), generator=g))
        if used + p + r > T:
            break
        rows.append((torch.randint(8, vocab, (p,), generator=g).tolist(), torch.randint(8, vocab, (r,), generator=g).tolist()))
        used += p + r
    return pack_rows([rows], T)


def test_fused_adam_atan2_matches_foreach() -> None:
    torch.manual_seed(0)
    shapes = [(257, 129), (4096,), (3, 5, 7)]
    ps_a = [torch.randn(s, device="cuda", requires_grad=True) for s in shapes]
    ps_b = [p.detach().clone().requires_grad_() for p in ps_a]
    opt_a = AdamAtan2(ps_a, lr=1e-2, weight_decay=0.1, fused=True)
    opt_b = AdamAtan2(ps_b, lr=1e-2, weight_decay=0.1, fused=False, foreach=True)
    for _ in range(5):
        grads = [torch.randn(s, device="cuda") for s in shapes]
        for p, q, g in zip(ps_a, ps_b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    for p, q in zip(ps_a, ps_b):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7), (p - q).abs().max()
        sa, sb = opt_a.state[p], opt_b.state[q]
        assert torch.allclose(sa["exp_avg_sq"], sb["exp_avg_sq"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("warmup", [False, True])
def test_fused_adam_atan2_with_ema_matches_step_then_update(warmup: bool) -> None:
    """The Triton kernel's EMA (folded into the optimizer's pass) against the separate foreach
    lerp, including the lerp's second form (weights >= 0.5 while the EMA warms up) and a
    parameter without a gradient (averaged by the EMA alone)."""
    nets = []
    for _ in range(2):
        torch.manual_seed(0)
        nets.append(torch.nn.Sequential(torch.nn.Linear(129, 257), torch.nn.Linear(257, 3)).cuda())
    opts = [AdamAtan2(n.parameters(), lr=1e-2, weight_decay=0.1, fused=True) for n in nets]
    emas = [ModelEMA(n, decay=0.99, warmup=warmup) for n in nets]
    shapes = [p.shape for p in nets[0].parameters()]
    for _ in range(5):
        grads = [torch.randn(s, device="cuda") for s in shapes]
        grads[-1] = None  # the last bias: no gradient
        for n in nets:
            for p, g in zip(n.parameters(), grads):
                p.grad = None if g is None else g.clone()
        opts[0].step()
        emas[0].update(nets[0])
        opts[1].step_with_ema(emas[1], nets[1])
        for o in opts:
            o.zero_grad(set_to_none=True)
    for (name, a), (_, b) in zip(nets[0].named_parameters(), nets[1].named_parameters()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), (name, float((a - b).abs().max()))
        sa, sb = emas[0].shadow[name], emas[1].shadow[name]
        assert torch.allclose(sa, sb, rtol=1e-6, atol=1e-7), (name, float((sa - sb).abs().max()))
        if name != "1.bias":  # the others moved, so the average trails them (the bias never moves)
            assert not torch.equal(sa, a), name


def _rel_error(ref: list[torch.Tensor], other: list[torch.Tensor]) -> float:
    """|other - ref| / |ref| over all the tensors together (float32 norms)."""
    num = sum(float((a - b).float().norm() ** 2) for a, b in zip(ref, other)) ** 0.5
    return num / sum(float(a.float().norm() ** 2) for a in ref) ** 0.5


@pytest.fixture(autouse=True)
def _fresh_compile_state():
    """Every test compiles from a clean dynamo state. All blocks of all tests share one code
    object, and past its recompile limit dynamo runs it eagerly without an error: a compiled
    step would then silently be the eager one (seen in a whole-tier run, 2026-12-06)."""
    torch._dynamo.reset()
    yield


def _prepared(mcfg, **train_opts) -> HRMTextLM:
    """A seeded model on the GPU with `train.*` settings applied as the trainer applies them."""
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = HRMTextLM(mcfg)
    cfg = Config(model=mcfg)
    for k, v in train_opts.items():
        setattr(cfg.train, k, v)
    prepare_model(model, cfg.train, torch.device("cuda"))
    return model


@pytest.mark.parametrize("multi_kernel", [False, True])
@pytest.mark.parametrize("recompute_calls", [0, 2])
def test_compiled_step_matches_eager(recompute_calls: int, multi_kernel: bool) -> None:
    """Compiled blocks (with and without inductor's multi-kernel), the fused loss and per-call
    recompute give the eager step's loss and grads."""
    mcfg = model_config("S", vocab_size=4096, n_layers=4)
    batch = _batch(1024, mcfg.vocab_size, 0).with_loss_index().to("cuda")
    grads = []
    for compile_ in (False, True):
        model = _prepared(mcfg, compile=compile_, multi_kernel=multi_kernel)
        out = forward_backward(model, batch, 5, float(batch.loss_index.numel()), True, recompute_calls if compile_ else 0)
        grads.append((out.loss_sum, [p.grad.clone() for p in model.parameters()]))
    (l0, g0), (l1, g1) = grads
    assert torch.allclose(l0, l1, rtol=2e-3), (l0, l1)
    err = _rel_error(g0, g1)
    assert err < 2e-2, err


def _measured_step(model: HRMTextLM, batch) -> tuple[int, torch.Tensor, list[torch.Tensor]]:
    """One compiling micro-step, then a measured one: the bytes it allocated at its peak above the
    model and gradients' own, its loss and its gradients."""
    forward_backward(model, batch, 5, float(batch.loss_index.numel()), True)  # compile
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = forward_backward(model, batch, 5, float(batch.loss_index.numel()), True)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base, out.loss_sum, [p.grad.clone() for p in model.parameters()]


def test_activation_memory_budget_saves_memory_and_keeps_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """train.activation_memory_budget < 1: the compiled blocks save fewer activations (the peak of
    the step drops) and still give the full-memory step's loss and gradients."""
    import torch._functorch.config as functorch_config

    monkeypatch.setattr(functorch_config, "activation_memory_budget", 1.0)  # prepare_model sets a process global
    mcfg = model_config("S", vocab_size=4096, n_layers=4)
    batch = _batch(4096, mcfg.vocab_size, 2).with_loss_index().to("cuda")
    runs = []
    for budget in (1.0, 0.5):
        torch._dynamo.reset()  # a fresh compile under this budget
        model = _prepared(mcfg, activation_memory_budget=budget)
        assert functorch_config.activation_memory_budget == budget
        runs.append(_measured_step(model, batch))
        del model
    (m_full, l_full, g_full), (m_half, l_half, g_half) = runs
    assert m_half < 0.9 * m_full, (m_half, m_full)
    assert torch.allclose(l_full, l_half, rtol=2e-3), (l_full, l_half)
    err = _rel_error(g_full, g_half)
    assert err < 2e-2, err


def test_multi_kernel_blocks_compile_again_in_a_warm_process() -> None:
    """train.multi_kernel: a second compile of the same blocks in one process (the compile caches
    warm, as on a resumed or repeated run) works and gives the first one's loss. With torch 2.11 a
    cache hit of a multi-kernel graph failed (MultiKernelCall), hence its graphs skip that cache."""
    mcfg = model_config("S", vocab_size=4096, n_layers=2)
    batch = _batch(1024, mcfg.vocab_size, 1).with_loss_index().to("cuda")
    losses = []
    for _ in range(2):
        torch._dynamo.reset()
        model = _prepared(mcfg, multi_kernel=True)
        losses.append(forward_backward(model, batch, 2, float(batch.loss_index.numel()), True).loss_sum)
    assert torch.allclose(losses[0], losses[1], rtol=1e-3), losses  # a kernel picked anew may sum in another order


def _grad_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|a - b| / |b| over all gradients together, matched by name."""
    return _rel_error([b[n] for n in b], [a[n] for n in b])


def test_bf16_states_keep_the_step_and_save_memory() -> None:
    """train.bf16_states, compiled as in training: the states are bf16, the step's loss and
    gradients stay within bf16 rounding of the float32-state step, and the step saves less."""
    mcfg = model_config("S", vocab_size=4096, n_layers=4)
    batch = _batch(4096, mcfg.vocab_size, 3).with_loss_index().to("cuda")
    runs = []
    for on in (False, True):
        torch._dynamo.reset()
        model = _prepared(mcfg, bf16_states=on)
        assert model.model.autocast_states == on
        runs.append(_measured_step(model, batch))
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            h = model.hidden(batch.input_ids, batch.position_ids, model.build_mask(batch.doc_ids, batch.is_prefix), 5)
        assert h.dtype == (torch.bfloat16 if on else torch.float32)
        del model
    (m32, l32, g32), (m16, l16, g16) = runs
    assert torch.allclose(l32, l16, rtol=2e-3), (l32, l16)
    err = _rel_error(g32, g16)
    assert err < 3e-2, err
    # the saved float32 residual sums become bf16: 3.9% of this small model's step peak (H200, 2026-12-07)
    assert m16 < 0.98 * m32, (m16, m32)


def _two_steps(mcfg, batch, **opts) -> tuple[float, float, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Two compiled micro-steps with the weights changed in place in between (every matrix's rows
    rolled by one, as an optimizer writes: the storage stays where it was): the two losses, the
    second step's gradients and the first's. A cached weight that went stale would show."""
    model = _prepared(mcfg, **opts)
    denom = float(batch.loss_index.numel())
    first = float(forward_backward(model, batch, 5, denom, True).loss_sum)
    first_grads = {n: p.grad.float().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(p.roll(1, dims=0))
            p.grad = None
    second = float(forward_backward(model, batch, 5, denom, True).loss_sum)
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
    assert len(grads) == len(list(model.parameters())), opts  # every parameter got its gradient
    return first, second, grads, first_grads


@pytest.mark.parametrize("fused_wgrad", [False, True])
def test_bf16_weight_cache_matches_the_per_call_step(fused_wgrad: bool) -> None:
    """train.bf16_weight_cache, compiled as in training, over two micro-steps with the weights
    changed in place in between (as the optimizer changes them): the block projections run from
    a bf16 copy made once per micro-step, with or without the weight gradients added into .grad
    inside the GEMM (float32 sums instead of bf16 products summed by autograd), and give the
    per-call step's losses and gradients to bf16 rounding. The weight change moves the gradients
    far more than the tolerance, so a stale copy could not pass."""
    from hrm_text.train.projections import Bf16Linear

    mcfg = model_config("S", vocab_size=4096, n_layers=4)
    batch = _batch(2048, mcfg.vocab_size, 2).with_loss_index().to("cuda")
    runs = []
    for on in (False, True):
        runs.append(_two_steps(mcfg, batch, bf16_weight_cache=on, fused_wgrad=fused_wgrad))
        assert sum(isinstance(m, Bf16Linear) for m in _prepared(mcfg, bf16_weight_cache=on).modules()) == (16 if on else 0)
    base, cached = runs
    gap, moved = _grad_gap(cached[2], base[2]), _grad_gap(base[2], base[3])
    print(f"bf16 cache (fused_wgrad={fused_wgrad}): losses {cached[:2]} per-call {base[:2]}; "
          f"gradient gap {gap:.5f}; the weight change moved the gradients by {moved:.3f}")
    assert moved > 0.5, moved
    for i in (0, 1):
        assert abs(cached[i] - base[i]) / base[i] < 2e-3, (cached[:2], base[:2])
    assert gap < 2e-2, gap


@pytest.mark.parametrize("recipe", ["fused", "fused_lowmem"])
def test_fp8_weight_cache_and_fused_wgrad_match_the_per_call_step(recipe: str) -> None:
    """Compiled, as in training, over two micro-steps with the weights changed in place in between
    (as an optimizer step changes them): quantizing the weights once per micro-step and adding
    weight gradients into .grad inside the GEMM give the per-call step's losses, and gradients as
    close to the unquantized (bf16) step's as the per-call step's are.

    Why against bf16 and not only against the per-call step: float8 e4m3 keeps 3 mantissa bits,
    so any equally valid change of the graph that reorders float32 work flips a few roundings by
    1/16 and moves this tiny model's gradients by about 6% (the per-call step compiled against
    eager does). Today the cache is bit-equal to the per-call step (printed below), but a compiler
    update may round x once differently without anything being wrong. Closeness to bf16 holds
    either way, while a wrong or stale weight would be far off: the weight change (every matrix's
    rows rolled by one) moves the gradients
    by over 100%, which the check below requires to be well beyond its tolerance."""
    from hrm_text.model.loss import gemm_out_dtype_ok

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 needs compute capability 8.9+")
    assert gemm_out_dtype_ok("cuda")  # bf16 x bf16 -> float32 (and in-place addmm) on this build
    mcfg = model_config("S", vocab_size=4096, n_layers=4)
    batch = _batch(2048, mcfg.vocab_size, 2).with_loss_index().to("cuda")

    def two_steps(**opts: bool) -> tuple[float, float, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return _two_steps(mcfg, batch, **{"fp8": True, "fp8_recipe": recipe, **opts})

    off = dict(fp8_weight_cache=False, fused_wgrad=False)
    ref = two_steps(fp8=False, bf16_weight_cache=False)  # bf16, compiled, per-call casts
    base = two_steps(**off)  # float8, the per-call step
    cache = two_steps(fp8_weight_cache=True, fused_wgrad=False)
    both = two_steps(fp8_weight_cache=True, fused_wgrad=True)
    err = {name: _grad_gap(run[2], ref[2]) for name, run in (("per-call", base), ("cache", cache), ("both", both))}
    tol = 1.2 * err["per-call"] + 1e-2
    print(f"{recipe}: losses bf16 {ref[:2]} per-call {base[:2]} cache {cache[:2]} both {both[:2]}; "
          f"gradient gaps to bf16 {err} (tolerance {tol:.4f}); to the per-call step: "
          f"cache {_grad_gap(cache[2], base[2]):.4f}, both {_grad_gap(both[2], base[2]):.4f}")
    moved = _grad_gap(ref[2], ref[3])  # how far the weight change moved the gradients
    print(f"{recipe}: the weight change moved the gradients by {moved:.3f}")
    assert moved > 4 * tol, (moved, tol)  # so a stale cache could not pass the gap check below
    for name, run in (("cache", cache), ("both", both)):
        for i in (0, 1):
            assert abs(run[i] - base[i]) / base[i] < 1e-3, (name, i, run[:2], base[:2])
        assert err[name] < tol, (name, err)


@pytest.mark.parametrize("recipe", ["fused", "fused_lowmem", "rowwise"])
def test_fp8_step_runs_and_stays_close_to_bf16(recipe: str) -> None:
    if recipe not in FUSED_RECIPES:  # torchao's recipes
        pytest.importorskip("torchao")
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 needs compute capability 8.9+")
    mcfg = model_config("S", vocab_size=4096, n_layers=4)
    batch = _batch(2048, mcfg.vocab_size, 1).with_loss_index().to("cuda")
    losses, grads = [], []
    for fp8 in (False, True):
        model = _prepared(mcfg, fp8=fp8, fp8_recipe=recipe)
        out = forward_backward(model, batch, 5, float(batch.loss_index.numel()), True)
        losses.append(float(out.loss_sum))
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        grads.append([p.grad.float() for p in model.parameters() if p.grad is not None])
    assert abs(losses[1] - losses[0]) / losses[0] < 0.02, losses
    err = _rel_error(*grads)
    assert err < 0.15, err  # float8 e4m3 GEMMs: a few percent per GEMM
