"""Every architecture as a *schedule* over the same blocks (docs/ARCHITECTURE.md#the-recurrence,
#baselines): named state vectors per token, named stacks, and an ordered list of stack calls
`target = stack(sum of input states)`, with the calls recorded for autograd given K (the forward's
`bp_steps`; None records every call).

    hrm          z_H = embed * sqrt(hidden); z_L = z_L_init
                 repeat H_cycles: (L_cycles times: z_L = L(z_L + z_H)); z_H = H(z_H + z_L)
                 call order for H2 L3: L L L H L L L H
    trm          HRM's schedule with one shared stack of n_layers / 2
    transformer  one stack of all n_layers, one pass
    looped       one stack of all n_layers run looped_cycles times, z = stack(z + x) with z0 = 0;
                 gradients through the last K calls
    rins         L stack run rins_L_cycles times on z_L + x (z_L starts at z_L_init; gradients through
                 the last K), then the H stack once on z_L (always recorded)

K is chosen by the caller, not the model config (it is a training setting): the trainer's K warm-up
for hrm and trm (train.bp_*), the fixed train.looped_bp_steps / train.rins_bp_steps for the
baselines, as in the paper (TrainConfig.final_bp_steps). The transformer's one call is always recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

from hrm_text.config import ModelConfig


class CallKind(str, Enum):
    """Which credit-assignment budget a stack call draws on (H calls are recorded first)."""

    H = "H"
    L = "L"


class StateInit(str, Enum):
    EMBED = "embed"  # the scaled token embedding
    Z_L_INIT = "z_L_init"  # the fixed random vector buffer
    ZEROS = "zeros"


@dataclass(frozen=True)
class Call:
    stack: str  # attribute name of the Stack module called
    target: str  # state overwritten by the call's output
    inputs: tuple[str, ...]  # states summed to form the call's input
    kind: CallKind  # which credit-assignment budget the call draws on


@dataclass(frozen=True)
class Schedule:
    stacks: dict[str, int]  # stack attribute name -> number of blocks
    init: dict[str, StateInit]  # how each state starts
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
    h_idx = [i for i, c in enumerate(calls) if c.kind is CallKind.H]
    l_idx = [i for i, c in enumerate(calls) if c.kind is CallKind.L]
    chosen = set(h_idx[len(h_idx) - h_bp :] if h_bp > 0 else []) | set(l_idx[len(l_idx) - l_bp :] if l_bp > 0 else [])
    return tuple(i in chosen for i in range(len(calls)))


def hrm_schedule(cfg: ModelConfig, shared: bool = False) -> Schedule:
    """HRM (two stacks) or, with `shared=True`, TRM (one stack serving as both H and L)."""
    h_name, l_name = ("stack", "stack") if shared else ("H_module", "L_module")
    calls: list[Call] = []
    for _ in range(cfg.H_cycles):
        calls += [Call(l_name, "zL", ("zL", "zH"), CallKind.L) for _ in range(cfg.L_cycles)]
        calls.append(Call(h_name, "zH", ("zH", "zL"), CallKind.H))
    calls_t = tuple(calls)
    stacks = {"stack": cfg.half_layers} if shared else {"H_module": cfg.half_layers, "L_module": cfg.half_layers}
    return Schedule(
        stacks=stacks,
        init={"zH": StateInit.EMBED, "zL": StateInit.Z_L_INIT},
        calls=calls_t,
        output="zH",
        recorded=lambda K: hrm_recorded_calls(calls_t, K, cfg.H_cycles),
    )


def _last_n(n_calls: int, n: int) -> tuple[bool, ...]:
    return tuple(i >= n_calls - n for i in range(n_calls))


def transformer_schedule(cfg: ModelConfig) -> Schedule:
    calls = (Call("stack", "z", ("z",), CallKind.H),)
    return Schedule({"stack": cfg.n_layers}, {"z": StateInit.EMBED}, calls, "z", lambda K: (True,))


def looped_schedule(cfg: ModelConfig) -> Schedule:
    n = cfg.looped_cycles
    calls = tuple(Call("stack", "z", ("z", "x"), CallKind.L) for _ in range(n))
    return Schedule(
        {"stack": cfg.n_layers},
        {"x": StateInit.EMBED, "z": StateInit.ZEROS},
        calls,
        "z",
        lambda K: tuple(True for _ in calls) if K is None else _last_n(n, min(K, n)),
    )


def rins_schedule(cfg: ModelConfig) -> Schedule:
    n = cfg.rins_L_cycles
    calls = tuple(Call("L_module", "zL", ("zL", "x"), CallKind.L) for _ in range(n)) + (
        Call("H_module", "zH", ("zL",), CallKind.H),
    )
    return Schedule(
        {"H_module": cfg.half_layers, "L_module": cfg.half_layers},
        {"x": StateInit.EMBED, "zL": StateInit.Z_L_INIT},
        calls,
        "zH",
        lambda K: tuple(True for _ in calls) if K is None else _last_n(n, min(K, n)) + (True,),
    )


def build_schedule(cfg: ModelConfig) -> Schedule:
    builders: dict[str, Callable[[ModelConfig], Schedule]] = {
        "hrm": hrm_schedule,
        "trm": lambda c: hrm_schedule(c, shared=True),
        "transformer": transformer_schedule,
        "looped": looped_schedule,
        "rins": rins_schedule,
    }
    if cfg.arch not in builders:
        raise ValueError(f"unknown architecture {cfg.arch!r}; choose one of {', '.join(builders)}")
    return builders[cfg.arch](cfg)
