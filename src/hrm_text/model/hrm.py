"""The recurrent core: embedding + stacks of blocks run in the order of a schedule
(model/schedule.py; docs/ARCHITECTURE.md#the-recurrence).

Deep credit assignment: only some calls are *recorded* for autograd (the schedule's `recorded`);
the rest run under `torch.no_grad()`, so they pass no gradient to their parameters or to their input.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from hrm_text.config import ModelConfig
from hrm_text.model.attention import AttnMask
from hrm_text.model.kv_cache import CacheView, PromptWrites, StaticKVCache
from hrm_text.model.layers import RotaryEmbedding, Stack, trunc_normal_
from hrm_text.model.schedule import Call, StateInit, build_schedule


class RecurrentCore(nn.Module):
    """Embedding + stacks + schedule. Its state dict keys match transformers' `model.*` keys for HRM."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.schedule = build_schedule(cfg)
        d = cfg.hidden_size
        self.embedding_scale = math.sqrt(d)  # = 1 / embedding init std
        self.embed_tokens = nn.Embedding(cfg.padded_vocab_size, d)
        for name, n in self.schedule.stacks.items():
            setattr(self, name, Stack(n, d, cfg.num_heads, cfg.head_dim, cfg.intermediate_size, cfg.norm_eps))
        if StateInit.Z_L_INIT in self.schedule.init.values():
            self.register_buffer("z_L_init", torch.zeros(d))
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        # Under autocast, hold the states (every stack's residual stream) in the autocast dtype
        # rather than the embedding's float32, as transformers' hrm_text in bf16 does: half the
        # bytes of every residual add, norm input and saved block input (train.bf16_states).
        self.autocast_states = False

    def reset_parameters(self, generator_seed: int | None = None) -> None:
        d = self.cfg.hidden_size
        trunc_normal_(self.embed_tokens.weight, 1.0 / math.sqrt(d))
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters") and not isinstance(m, (nn.Embedding, nn.Linear)):
                m.reset_parameters()
        if hasattr(self, "z_L_init"):
            with torch.no_grad():
                trunc_normal_(self.z_L_init, 1.0)

    def stacks(self) -> dict[str, Stack]:
        return {name: getattr(self, name) for name in self.schedule.stacks}

    def initial_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Every state before the first stack call, and the RoPE tables for `position_ids`."""
        x = self.embed_tokens(input_ids) * self.embedding_scale
        dev = x.device.type
        if self.autocast_states and torch.is_autocast_enabled(dev):
            x = x.to(torch.get_autocast_dtype(dev))
        states: dict[str, torch.Tensor] = {}
        for name, how in self.schedule.init.items():
            if how is StateInit.EMBED:
                states[name] = x
            elif how is StateInit.Z_L_INIT:
                states[name] = self.z_L_init.to(x.dtype).expand_as(x)
            else:
                states[name] = torch.zeros_like(x)
        return states, self.rope(position_ids)

    @staticmethod
    def call_input(states: dict[str, torch.Tensor], call: Call) -> torch.Tensor:
        """The sum of the states a stack call reads."""
        inp = states[call.inputs[0]]
        for name in call.inputs[1:]:
            inp = inp + states[name]
        return inp

    def cache_views(
        self, cache: StaticKVCache | PromptWrites, index: int, call: Call, positions: torch.Tensor, rows: torch.Tensor | None = None
    ) -> list[CacheView]:
        """One cache view per block of the `index`-th stack call: each block of each call owns a slot."""
        first = index * self.schedule.layers_per_call
        return [cache.view(first + j, positions, rows) for j in range(self.schedule.stacks[call.stack])]

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        mask: AttnMask,
        bp_steps: int | None = None,
        cache: StaticKVCache | PromptWrites | None = None,
        *,
        cache_positions: torch.Tensor | None = None,
        cache_rows: torch.Tensor | None = None,
        remat_calls: int = 0,
    ) -> torch.Tensor:
        """Return the output state [B, T, hidden]. `bp_steps` = K recorded calls (None: all calls run
        under the ambient grad mode). With `cache`, keys/values are written at `cache_positions`
        (default: `position_ids`) of the cache rows `cache_rows` (default: all).
        `remat_calls`: the first N recorded calls keep only their input for backward and run their
        forward again there (activation checkpointing per stack call: memory for one extra forward)."""
        sched = self.schedule
        states, rope = self.initial_states(input_ids, position_ids)
        recorded = sched.recorded(bp_steps)
        remat = set([i for i, r in enumerate(recorded) if r][:remat_calls]) if torch.is_grad_enabled() else set()
        stacks = self.stacks()
        for i, call in enumerate(sched.calls):
            views = None
            if cache is not None:
                pos = cache_positions if cache_positions is not None else position_ids
                views = self.cache_views(cache, i, call, pos, cache_rows)
            with nullcontext() if recorded[i] else torch.no_grad():
                inp = self.call_input(states, call)
                if i in remat:
                    states[call.target] = checkpoint(stacks[call.stack], inp, rope, mask, views, use_reentrant=False)
                else:
                    states[call.target] = stacks[call.stack](inp, rope, mask, views)
        return states[sched.output]
