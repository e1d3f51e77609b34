"""The engine's block-by-block decode (infer/decode_block.py) computes what the model computes.

`decode_hidden` runs the recurrent core's schedule itself, each block through a per-block function;
here that function is the block's own forward, or the decode parts composed without compilation (the
unfused pair around the eager cache write, and the fused pair around the kernel's PyTorch reference,
with and without the multiply + sum matmuls). Each must equal one cached step of `model.hidden`, in
its output and in every cache slot it writes, for every architecture's schedule.
"""

from __future__ import annotations

import pytest
import torch

from hrm_text.config import model_config
from hrm_text.infer.decode_attention import decode_attention_reference
from hrm_text.infer.decode_block import (
    BlockFn,
    Rope,
    attn_finish,
    attn_inputs,
    decode_hidden,
    eager_block,
    finish_gated,
    fused_projection,
    rows_linear,
    run_stack,
)
from hrm_text.model.attention import AttnMask, attention
from hrm_text.model.kv_cache import CacheView
from hrm_text.model.layers import Block
from hrm_text.model.lm import HRMTextLM

B, L = 3, 12


def _unfused(block: Block, x: torch.Tensor, rope: Rope, mask: AttnMask, view: CacheView | None) -> torch.Tensor:
    assert view is not None
    gate, q, k, v = attn_inputs(block, x, rope)
    k, v = view.update(k, v)
    return attn_finish(block, x, gate, attention(q, k, v, mask))


def _fused_reference(gemv: bool) -> BlockFn:
    extra = (rows_linear,) if gemv else ()

    def run(block: Block, x: torch.Tensor, rope: Rope, mask: AttnMask, view: CacheView | None) -> torch.Tensor:
        assert view is not None and view.rows is None
        gqkv = fused_projection(block, x, *extra)
        gated = decode_attention_reference(gqkv, rope[0], rope[1], view.k, view.v, view.positions, block.attn.num_heads)
        return finish_gated(block, x, gated, *extra)

    return run


BLOCK_FNS = {"eager": eager_block, "unfused": _unfused, "fused": _fused_reference(False), "fused_gemv": _fused_reference(True)}


@pytest.mark.parametrize("arch", ["hrm", "trm", "transformer", "looped", "rins"])
@pytest.mark.parametrize("fn", list(BLOCK_FNS))
@torch.no_grad()
def test_decode_hidden_equals_the_model_step(arch: str, fn: str) -> None:
    torch.manual_seed(0)
    model = HRMTextLM(model_config("tiny", vocab_size=64, arch=arch)).eval()
    want_cache, got_cache = model.new_cache(B, L), model.new_cache(B, L)
    for a, b in zip(want_cache.k + want_cache.v, got_cache.k + got_cache.v):  # earlier tokens' keys/values
        a.copy_(torch.randn_like(a))
        b.copy_(a)
    ids = torch.tensor([[5], [17], [42]])
    pos = torch.tensor([[0], [4], [L - 1]])  # rows at different lengths, one at the cache's end
    valid = (torch.arange(L)[None, :] <= pos).view(B, 1, 1, L)
    mask = AttnMask("sdpa", dense=valid)

    want = model.hidden(ids, pos, mask, None, want_cache, cache_positions=pos)
    got = decode_hidden(model.model, ids, pos, mask, got_cache, BLOCK_FNS[fn])

    exact = fn in ("eager", "unfused")  # the same operations; the fused ones attend in float32
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got, want, **tol)
    assert len(got_cache.k) == model.num_cache_slots
    for slot, (gk, wk, gv, wv) in enumerate(zip(got_cache.k, want_cache.k, got_cache.v, want_cache.v)):
        torch.testing.assert_close(gk, wk, **tol, msg=lambda m: f"keys of slot {slot}: {m}")
        torch.testing.assert_close(gv, wv, **tol, msg=lambda m: f"values of slot {slot}: {m}")


def test_a_stack_of_the_wrong_length_is_an_error() -> None:
    # run_stack pairs blocks with cache views strictly: a missing view must not silently skip a block
    model = HRMTextLM(model_config("tiny", vocab_size=64)).eval()
    stack = next(iter(model.model.stacks().values()))
    cache = model.new_cache(1, 4)
    x = torch.zeros(1, 1, model.cfg.hidden_size)
    rope = model.model.rope(torch.zeros(1, 1, dtype=torch.long))
    views = [cache.view(0, torch.zeros(1, 1, dtype=torch.long))]
    with pytest.raises(ValueError):
        run_stack(stack, x, rope, AttnMask("sdpa", dense=torch.ones(1, 1, 1, 4, dtype=torch.bool)), views, eager_block)
