"""train/graph_passes.py: the compiled block with the residual added inside its last GEMM computes
what the block computes, and the pass rewrites only the sum the block returns."""

import copy

import pytest
import torch

from hrm_text.config import model_config
from hrm_text.model.attention import build_prefix_lm_mask
from hrm_text.model.lm import HRMTextLM
from hrm_text.train.graph_passes import ResidualIntoGemm, residual_into_gemm


class _Counting(ResidualIntoGemm):
    """The pass, recording how many sums it moved into a GEMM in each graph it saw."""

    def __init__(self) -> None:
        self.counts: list[int] = []

    def __call__(self, graph: torch.fx.Graph) -> None:
        self.counts.append(residual_into_gemm(graph))


def _block_and_inputs(T: int = 64):
    torch.manual_seed(0)
    model = HRMTextLM(model_config("tiny", vocab_size=512))
    blk = model.blocks()[0]
    x = torch.randn(1, T, model.cfg.hidden_size)
    doc = torch.cat([torch.zeros(1, 40, dtype=torch.int32), torch.ones(1, T - 40, dtype=torch.int32)], 1)
    is_prefix = (torch.arange(T)[None] % 40) < 15
    mask = build_prefix_lm_mask(doc, is_prefix, "sdpa")
    pos = torch.cat([torch.arange(40), torch.arange(T - 40)])[None]
    return blk, x, model.model.rope(pos), mask


def test_residual_in_the_gemm_gives_the_blocks_output_and_gradients():
    """float32 on CPU (addmm in the input dtype): forward, backward and a no-grad call of the
    compiled block against the eager block. One sum per block is the block's output and moves
    into the GEMM; the attention's residual sum feeds the next norm and stays."""
    blk, x, rope, mask = _block_and_inputs()
    ref = copy.deepcopy(blk)
    spy = _Counting()
    blk.compile(options={"post_grad_custom_post_pass": spy, "fx_graph_cache": False})
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = blk(xa, rope, mask), ref(xb, rope, mask)
    (ya.square().sum()).backward()
    (yb.square().sum()).backward()
    assert spy.counts == [1, 0]  # forward graph: the returned sum; backward graph: nothing to move
    assert torch.allclose(ya, yb, rtol=1e-5, atol=1e-5)
    assert torch.allclose(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    for (n, p), (_, q) in zip(blk.named_parameters(), ref.named_parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-4), n
    with torch.no_grad():
        assert torch.allclose(blk(x, rope, mask), yb, rtol=1e-5, atol=1e-5)
    assert spy.counts == [1, 0, 1]  # the inference graph (HRM's unrecorded calls) too


def test_a_float32_residual_with_a_bf16_product_is_left_alone_off_cuda():
    """Mixed dtypes need addmm's float32 output, which only CUDA has: on CPU the graph stays."""
    blk, x, rope, mask = _block_and_inputs()
    ref = copy.deepcopy(blk)
    spy = _Counting()
    blk.compile(options={"post_grad_custom_post_pass": spy, "fx_graph_cache": False})
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        y, want = blk(x, rope, mask), ref(x, rope, mask)
    assert spy.counts == [0]
    assert y.dtype == want.dtype == torch.float32
    assert torch.allclose(y, want, rtol=2e-2, atol=2e-2)


def test_a_sum_that_is_not_returned_is_left_alone():
    def f(r: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        s = r + a @ b
        return s * 2  # the sum feeds an element-wise op: fused there, no epilogue

    gm = torch.fx.experimental.proxy_tensor.make_fx(f, tracing_mode="fake")(torch.randn(8, 4), torch.randn(8, 16), torch.randn(16, 4))
    assert residual_into_gemm(gm.graph) == 0


@pytest.mark.parametrize("returned", [True, False])
def test_the_rewritten_graph_runs_and_matches(returned):
    def f(r: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return r + (a @ b).view(2, 4, 4) if returned else (r + (a @ b).view(2, 4, 4)).relu()

    args = (torch.randn(2, 4, 4), torch.randn(8, 16), torch.randn(16, 4))
    gm = torch.fx.experimental.proxy_tensor.make_fx(f, tracing_mode="fake")(*args)
    assert residual_into_gemm(gm.graph) == int(returned)
    gm.recompile()
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert (torch.ops.hrm_text.residual_mm.default in targets) == returned
    assert torch.allclose(gm(*args), f(*args), rtol=1e-5, atol=1e-5)


def test_a_dynamic_shape_graph_is_left_alone():
    def f(r: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return r + (a @ b).view(r.shape)

    args = (torch.randn(2, 4, 4), torch.randn(8, 16), torch.randn(16, 4))
    gm = torch.fx.experimental.proxy_tensor.make_fx(f, tracing_mode="symbolic")(*args)
    assert any(n.target is torch.ops.aten.mm.default for n in gm.graph.nodes)
    assert residual_into_gemm(gm.graph) == 0
    assert torch.allclose(gm(*args), f(*args))
