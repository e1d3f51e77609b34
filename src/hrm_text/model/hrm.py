"""The recurrent core: stacks of blocks called in a fixed schedule (docs/ARCHITECTURE.md#the-recurrence).

Every architecture in this project is a *schedule*: named state vectors per token (z_H, z_L, ...),
named stacks, and an ordered list of stack calls `target = stack(sum of input states)`. HRM is

    z_H = embed * sqrt(hidden);  z_L = z_L_init
    repeat H_cycles:   (L_cycles times: z_L = L(z_L + z_H));   z_H = H(z_H + z_L)
    output z_H                  -> call order for H2 L3:  L L L H L L L H

Deep credit assignment: only some calls are *recorded* for autograd (`recorded_calls`); the rest run
under `torch.no_grad()`, so they pass no gradient to their parameters or to their input.
The baselines (Transformer, Looped, TRM, RINS) are schedules too: see `baselines.py`.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from hrm_text.config import ModelConfig
from hrm_text.model.attention import AttnMask
from hrm_text.model.kv_cache import PromptWrites, StaticKVCache
from hrm_text.model.layers import RotaryEmbedding, Stack, trunc_normal_


@dataclass(frozen=True)
class Call:
    stack: str  # attribute name of the Stack module called
    target: str  # state overwritten by the call's output
    inputs: tuple[str, ...]  # states summed to form the call's input
    kind: str  # "H" or "L": which credit-assignment budget the call draws on


@dataclass(frozen=True)
class Schedule:
    stacks: dict[str, int]  # stack attribute name -> number of blocks
    init: dict[str, str]  # state name -> "embed" | "z_L_init" | "zeros"
    calls: tuple[Call, ...]
    output: str
    recorded: Callable[[int | None], tuple[bool, ...]]  # K (None = all) -> which calls record grads

    @property
    def layers_per_call(self) -> int:
        return max(self.stacks.values())

    @property
    def num_cache_slots(self) -> int:
        return len(self.calls) * self.layers_per_call


def hrm_recorded_calls(calls: tuple[Call, ...], K: int | None, h_cycles: int) -> tuple[bool, ...]:
    """H calls first (docs/ARCHITECTURE.md#deep-credit-assignment). H_bp = min(H_cycles, K-1),
    L_bp = K - H_bp; the last H_bp H calls and the last L_bp L calls (counted over all cycles) are
    recorded."""
    if K is None:
        return tuple(True for _ in calls)
    h_bp = min(h_cycles, K - 1)
    l_bp = K - h_bp
    h_idx = [i for i, c in enumerate(calls) if c.kind == "H"]
    l_idx = [i for i, c in enumerate(calls) if c.kind == "L"]
    chosen = set(h_idx[len(h_idx) - h_bp :] if h_bp > 0 else []) | set(l_idx[len(l_idx) - l_bp :] if l_bp > 0 else [])
    return tuple(i in chosen for i in range(len(calls)))


def hrm_schedule(cfg: ModelConfig, shared: bool = False) -> Schedule:
    """HRM (two stacks) or, with `shared=True`, TRM (one stack serving as both H and L)."""
    h_name, l_name = ("stack", "stack") if shared else ("H_module", "L_module")
    calls: list[Call] = []
    for _ in range(cfg.H_cycles):
        calls += [Call(l_name, "zL", ("zL", "zH"), "L") for _ in range(cfg.L_cycles)]
        calls.append(Call(h_name, "zH", ("zH", "zL"), "H"))
    calls_t = tuple(calls)
    stacks = {"stack": cfg.half_layers} if shared else {"H_module": cfg.half_layers, "L_module": cfg.half_layers}
    return Schedule(
        stacks=stacks,
        init={"zH": "embed", "zL": "z_L_init"},
        calls=calls_t,
        output="zH",
        recorded=lambda K: hrm_recorded_calls(calls_t, K, cfg.H_cycles),
    )


def build_schedule(cfg: ModelConfig) -> Schedule:
    if cfg.arch == "hrm":
        return hrm_schedule(cfg)
    if cfg.arch == "trm":
        return hrm_schedule(cfg, shared=True)
    from hrm_text.model import baselines

    return baselines.build(cfg)


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
        if "z_L_init" in self.schedule.init.values():
            self.register_buffer("z_L_init", torch.zeros(d))
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)

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

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        mask: AttnMask,
        bp_steps: int | None = None,
        cache: StaticKVCache | PromptWrites | None = None,
        cache_positions: torch.Tensor | None = None,
        cache_rows: torch.Tensor | None = None,
        *,
        remat_calls: int = 0,
    ) -> torch.Tensor:
        """Return the output state [B, T, hidden]. `bp_steps` = K recorded calls (None: all calls run
        under the ambient grad mode). With `cache`, keys/values are written at `cache_positions`.
        `remat_calls`: the first N recorded calls keep only their input for backward and run their
        forward again there (activation checkpointing per stack call: memory for one extra forward)."""
        sched = self.schedule
        x = self.embed_tokens(input_ids) * self.embedding_scale
        rope = self.rope(position_ids)
        states: dict[str, torch.Tensor] = {}
        for name, how in sched.init.items():
            if how == "embed":
                states[name] = x
            elif how == "z_L_init":
                states[name] = self.z_L_init.to(x.dtype).expand_as(x)
            else:
                states[name] = torch.zeros_like(x)
        recorded = sched.recorded(bp_steps)
        remat = set([i for i, r in enumerate(recorded) if r][:remat_calls]) if torch.is_grad_enabled() else set()
        per_call = sched.layers_per_call
        stacks = self.stacks()
        for i, call in enumerate(sched.calls):
            views = None
            if cache is not None:
                pos = cache_positions if cache_positions is not None else position_ids
                views = [cache.view(i * per_call + j, pos, cache_rows) for j in range(sched.stacks[call.stack])]
            with nullcontext() if recorded[i] else torch.no_grad():
                inp = states[call.inputs[0]]
                for name in call.inputs[1:]:
                    inp = inp + states[name]
                if i in remat:
                    states[call.target] = checkpoint(stacks[call.stack], inp, rope, mask, views, use_reentrant=False)
                else:
                    states[call.target] = stacks[call.stack](inp, rope, mask, views)
        return states[sched.output]
