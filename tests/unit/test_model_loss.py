"""The fused head + cross-entropy (model/loss.py) against the plain full-logits computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hrm_text.data.batch import IGNORE_INDEX
from hrm_text.model.loss import linear_cross_entropy
from hrm_text.model.lm import response_loss


def _reference(h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = (h @ w.t()).to(torch.promote_types(h.dtype, torch.float32))
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    hits = ((logits.argmax(-1) == labels) & (labels != IGNORE_INDEX)).sum()
    return loss, hits


@pytest.mark.parametrize("chunk", [3, 7, 4096])
def test_fused_loss_matches_full_logits_in_float64(chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    B, T, d, V = 2, 13, 16, 50
    h = torch.randn(B, T, d, dtype=torch.float64, generator=g, requires_grad=True)
    head = torch.nn.Linear(d, V, bias=False).double()
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[torch.rand(B, T, generator=g) < 0.4] = IGNORE_INDEX
    out = response_loss(h, head, labels, chunk=chunk)
    gh, gw = torch.autograd.grad(out.loss_sum * 0.37, (h, head.weight))
    ref_loss, ref_hits = _reference(h, head.weight, labels)
    rh, rw = torch.autograd.grad(ref_loss * 0.37, (h, head.weight))
    assert torch.allclose(out.loss_sum.double(), ref_loss, rtol=1e-6)
    assert int(out.num_correct) == int(ref_hits)
    assert int(out.num_tokens) == int((labels != IGNORE_INDEX).sum())
    # float32 statistics inside: gradients agree to float32 precision
    assert torch.allclose(gh, rh, rtol=1e-5, atol=1e-6)
    assert torch.allclose(gw, rw, rtol=1e-5, atol=1e-6)
    # unlabelled positions get exactly zero gradient
    assert torch.all(gh.reshape(-1, d)[labels.reshape(-1) == IGNORE_INDEX] == 0)


def test_fused_loss_bf16_close_to_float32_reference() -> None:
    g = torch.Generator().manual_seed(1)
    N, d, V = 64, 32, 300
    h = torch.randn(N, d, generator=g, requires_grad=True)
    w = (torch.randn(V, d, generator=g) / d**0.5).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g)
    loss, _ = linear_cross_entropy(h, w, t, chunk=16, compute_dtype=torch.bfloat16)
    loss.backward()
    ref = F.cross_entropy(h.detach() @ w.detach().t(), t, reduction="sum")
    assert abs(loss.item() - ref.item()) / ref.item() < 1e-2
    assert h.grad is not None and h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32


def test_fused_loss_with_no_labels_is_zero_and_differentiable() -> None:
    h = torch.randn(1, 5, 8, requires_grad=True)
    head = torch.nn.Linear(8, 11, bias=False)
    labels = torch.full((1, 5), IGNORE_INDEX)
    out = response_loss(h, head, labels)
    out.loss_sum.backward()
    assert out.loss_sum.item() == 0.0 and int(out.num_tokens) == 0
    assert torch.all(h.grad == 0)


@pytest.mark.parametrize("preset", ["tiny", "S"])
def test_training_step_with_and_without_speed_options_agree(preset: str) -> None:
    """The fused loss against head + F.cross_entropy over all positions, and per-call recompute
    against none: same loss and gradients on the tiny and S presets (CPU, float32)."""
    from hrm_text.config import model_config
    from hrm_text.data.batch import pack_rows
    from hrm_text.model.lm import HRMTextLM

    cfg = model_config(preset, vocab_size=512, n_layers=4, max_seq_len=256)
    torch.manual_seed(0)
    model = HRMTextLM(cfg)
    g = torch.Generator().manual_seed(3)
    rows = [[(torch.randint(8, 512, (n,), generator=g).tolist(), torch.randint(8, 512, (m,), generator=g).tolist())
             for n, m in ((9, 5), (4, 1), (20, 12))]]
    batch = pack_rows(rows, 64)

    def grads(fn) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = fn()
        loss.backward()
        return float(loss), [p.grad.clone() for p in model.parameters()]

    def plain() -> torch.Tensor:
        mask = model.build_mask(batch.doc_ids, batch.is_prefix)
        logits = model(batch.input_ids, batch.position_ids, mask, 5).float()
        return F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")

    ref_loss, ref = grads(plain)
    for kwargs in ({}, {"remat_calls": 2}):
        loss, got = grads(lambda: model.loss(batch.with_loss_index(), bp_steps=5, **kwargs).loss_sum)
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        for a, b in zip(got, ref):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
