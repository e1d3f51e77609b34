"""Decode-only block code: a block's computation in parts, and the recurrence run block by block.

Decoding one token evaluates every block of every stack call (128 for XL), each a handful of small
kernels, so the engine compiles a block's dense parts once and shares them across all blocks and
stack calls (`CompiledDecodeBlock`), keeping the cache write and attention between them eager.
The model (model/layers.py, model/hrm.py) knows nothing of this: `decode_hidden` runs the
recurrent core's schedule itself, calling a per-block function instead of `Stack.forward`.

All of it computes exactly what `Block.forward` / `RecurrentCore.forward` compute.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from hrm_text.infer.decode_attention import decode_attention
from hrm_text.model.attention import AttnMask, attention
from hrm_text.model.hrm import RecurrentCore
from hrm_text.model.kv_cache import CacheView, StaticKVCache
from hrm_text.model.layers import Block, Linear, Stack, rms_norm

Rope = tuple[torch.Tensor, torch.Tensor]
# (block, x, rope, mask, cache view) -> block output: how `decode_hidden` runs each block
BlockFn = Callable[[Block, torch.Tensor, Rope, AttnMask, CacheView | None], torch.Tensor]


# ---------------------------------------------------------------- Block.forward in parts
# Unfused: the two dense parts around the eager cache write + attention (a compiled in-place write
# into a cache passed as input can copy the whole cache).
def attn_inputs(block: Block, x: torch.Tensor, rope: Rope) -> tuple[torch.Tensor, ...]:
    """norm, fused gate|q|k|v projection, RoPE: gate [B, T, H, D] and q, k, v [B, H, T, D]."""
    return block.attn.project(rms_norm(x, block.eps), rope)


def attn_finish(block: Block, x: torch.Tensor, gate: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """Output gate, o_proj and residual, then norm, SwiGLU and residual."""
    x = x + block.attn.output(gate, attn_out)
    return x + block.mlp(rms_norm(x, block.eps))


# Fused: the Triton decode kernel (infer/decode_attention.py) takes the raw projection and returns
# the gated attention output, so the dense parts around it shrink to these two. `linear` lets the
# engine choose how the matmuls are written (one-row decoding uses multiply + sum).
def fused_projection(block: Block, x: torch.Tensor, linear: Linear = F.linear) -> torch.Tensor:
    """norm and the fused gate|q|k|v projection, before RoPE: [B, T, 4 * H * D]."""
    return linear(rms_norm(x, block.eps), block.attn.gqkv_proj.weight)


def finish_gated(block: Block, x: torch.Tensor, gated: torch.Tensor, linear: Linear = F.linear) -> torch.Tensor:
    """o_proj of the gated attention output and residual, then norm, SwiGLU and residual."""
    x = x + linear(gated, block.attn.o_proj.weight)
    return x + block.mlp(rms_norm(x, block.eps), linear)


def rows_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T for a few rows, written as a float32 multiply + sum (one reduction per output)."""
    return (x.float().unsqueeze(-2) * w.float()).sum(-1).to(x.dtype)


def _fused_projection_gemv(block: Block, x: torch.Tensor) -> torch.Tensor:
    return fused_projection(block, x, rows_linear)


def _finish_gated_gemv(block: Block, x: torch.Tensor, gated: torch.Tensor) -> torch.Tensor:
    return finish_gated(block, x, gated, rows_linear)


class CompiledDecodeBlock:
    """Runs one decode block in three parts, the two dense ones compiled once and shared by every
    block and stack call:

      unfused: compiled(norm, gqkv, RoPE) -> eager cache write + attention -> compiled(gate, o_proj,
               residual, norm, SwiGLU, residual)
      fused:   compiled(norm, gqkv) -> Triton decode_attention (RoPE, cache write, attention, gate)
               -> compiled(o_proj, residual, norm, SwiGLU, residual)

    The cache write stays outside the compiled parts: a compiled in-place write into a cache passed
    as input can copy the whole slot. An instance is a `BlockFn`.
    """

    def __init__(self, mode: str | None = None, fused: bool = False, gemv: bool = False) -> None:
        # mode (InferConfig.compile_mode) "max-autotune-no-cudagraphs" lets inductor tune the decode
        # matmuls (minutes of compilation at start-up); the default mode compiles in seconds
        self.fused = fused
        self.mode = mode
        if fused and gemv:
            # matmuls as multiply + sum: inductor emits them as reduction kernels fused with the norm,
            # residual and SwiGLU work around them, tuned by coordinate descent
            opts = {"coordinate_descent_tuning": True}
            self.pre = torch.compile(_fused_projection_gemv, dynamic=False, options=opts)
            self.post = torch.compile(_finish_gated_gemv, dynamic=False, options=opts)
        elif fused:
            self.pre = torch.compile(fused_projection, dynamic=False, mode=mode)
            self.post = torch.compile(finish_gated, dynamic=False, mode=mode)
        else:
            self.pre = torch.compile(attn_inputs, dynamic=False, mode=mode)
            self.post = torch.compile(attn_finish, dynamic=False, mode=mode)

    def __call__(self, block: Block, x: torch.Tensor, rope: Rope, mask: AttnMask, view: CacheView | None) -> torch.Tensor:
        if self.fused:
            assert view is not None and view.rows is None, "the fused path decodes into every cache row"
            cos, sin = rope
            gated = decode_attention(self.pre(block, x), cos, sin, view.k, view.v, view.positions.reshape(-1), block.attn.num_heads)
            return self.post(block, x, gated)
        gate, q, k, v = self.pre(block, x, rope)
        if view is not None:
            k, v = view.update(k, v)
        return self.post(block, x, gate, attention(q, k, v, mask))


def eager_block(block: Block, x: torch.Tensor, rope: Rope, mask: AttnMask, view: CacheView | None) -> torch.Tensor:
    """The block's own forward (module calls, so live LoRA adapters apply): the uncompiled `BlockFn`."""
    return block(x, rope, mask, view)


# ---------------------------------------------------------------- the recurrence, block by block
def run_stack(stack: Stack, x: torch.Tensor, rope: Rope, mask: AttnMask, views: list[CacheView], block_fn: BlockFn) -> torch.Tensor:
    """`Stack.forward` with each block run by `block_fn`: the blocks, then the final norm."""
    for layer, view in zip(stack.layers, views, strict=True):
        x = block_fn(layer, x, rope, mask, view)  # type: ignore[arg-type]
    return rms_norm(x, stack.eps)


def decode_hidden(
    core: RecurrentCore, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: AttnMask, cache: StaticKVCache, block_fn: BlockFn
) -> torch.Tensor:
    """`core(input_ids, position_ids, mask, cache=cache)` (every call under the ambient grad mode,
    keys/values written at `position_ids` in every cache row) with each block run by `block_fn`."""
    states, rope = core.initial_states(input_ids, position_ids)
    stacks = core.stacks()
    for i, call in enumerate(core.schedule.calls):
        views = core.cache_views(cache, i, call, position_ids)
        states[call.target] = run_stack(stacks[call.stack], core.call_input(states, call), rope, mask, views, block_fn)
    return states[core.schedule.output]
