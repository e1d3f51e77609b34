"""Baseline architectures as schedules over the same blocks and batch format (docs/ARCHITECTURE.md#baselines).

  transformer  one stack of all `n_layers`, one pass
  looped       one stack of all `n_layers` run `looped_cycles` times, z = stack(z + x) with z0 = 0;
               gradients through the last `looped_bp_steps` calls
  trm          HRM's schedule with one shared stack of `n_layers / 2` (built in hrm.py)
  rins         L stack run `rins_L_cycles` times on z_L + x (z_L starts at z_L_init; gradients through
               the last `rins_bp_steps`), then the H stack once on z_L (always recorded)
The K schedule of deep credit assignment applies to hrm and trm; the other baselines use their
fixed counts above, as in the paper.
"""

from __future__ import annotations

from hrm_text.config import ModelConfig
from hrm_text.model.hrm import Call, Schedule


def _last_n(n_calls: int, n: int) -> tuple[bool, ...]:
    return tuple(i >= n_calls - n for i in range(n_calls))


def transformer_schedule(cfg: ModelConfig) -> Schedule:
    calls = (Call("stack", "z", ("z",), "H"),)
    return Schedule({"stack": cfg.n_layers}, {"z": "embed"}, calls, "z", lambda K: (True,))


def looped_schedule(cfg: ModelConfig) -> Schedule:
    n = cfg.looped_cycles
    calls = tuple(Call("stack", "z", ("z", "x"), "L") for _ in range(n))
    bp = min(cfg.looped_bp_steps, n)
    return Schedule(
        {"stack": cfg.n_layers},
        {"x": "embed", "z": "zeros"},
        calls,
        "z",
        lambda K: tuple(True for _ in calls) if K is None else _last_n(n, bp),
    )


def rins_schedule(cfg: ModelConfig) -> Schedule:
    n = cfg.rins_L_cycles
    calls = tuple(Call("L_module", "zL", ("zL", "x"), "L") for _ in range(n)) + (
        Call("H_module", "zH", ("zL",), "H"),
    )
    bp = min(cfg.rins_bp_steps, n)
    return Schedule(
        {"H_module": cfg.half_layers, "L_module": cfg.half_layers},
        {"x": "embed", "zL": "z_L_init"},
        calls,
        "zH",
        lambda K: tuple(True for _ in calls) if K is None else _last_n(n, bp) + (True,),
    )


def build(cfg: ModelConfig) -> Schedule:
    if cfg.arch == "transformer":
        return transformer_schedule(cfg)
    if cfg.arch == "looped":
        return looped_schedule(cfg)
    if cfg.arch == "rins":
        return rins_schedule(cfg)
    raise ValueError(f"unknown baseline architecture {cfg.arch!r}")
