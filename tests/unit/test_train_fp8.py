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
