"""Learning-rate and deep-credit-assignment schedules (docs/ARCHITECTURE.md#deep-credit-assignment,
#optimiser-and-schedules).

Both are pure functions of the step so that a resumed run recomputes exactly the values the
uninterrupted run would have used: nothing about the schedule lives in the checkpoint except `step`.

Step convention: `step` is the 1-based number of the optimizer step about to be taken
(1 .. total_steps), as in the reference trainer, which increments its counter before computing the
LR. So step 1 of a 2,000-step warm-up uses lr / 2000 and step 2,000 is the first at full LR.
"""

from __future__ import annotations

import math

from hrm_text.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """LR for optimizer step `step`: linear warm-up over `lr_warmup_steps`, then constant
    (`lr_schedule="constant"`) or a half cosine from `lr` down to `lr * lr_min_ratio` at
    `total_steps` (`"cosine"`; SFT uses ratio 0.1). Past `total_steps` the cosine stays at its floor."""
    base = float(cfg.lr)
    warm = int(cfg.lr_warmup_steps)
    if warm > 0 and step < warm:
        return base * max(step, 0) / warm
    if cfg.lr_schedule == "constant":
        return base
    if cfg.lr_schedule != "cosine":
        raise ValueError(f"train.lr_schedule={cfg.lr_schedule!r} is not one of constant, cosine")
    span = max(1, int(total_steps) - warm)
    progress = min(1.0, max(0.0, (step - warm) / span))
    ratio = float(cfg.lr_min_ratio)
    return base * (ratio + (1.0 - ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def bp_steps_at(step: int, total_steps: int, cfg: TrainConfig, arch: str) -> int:
    """K, the number of stack calls recorded for autograd at `step` for a model of `arch`
    (docs/ARCHITECTURE.md#deep-credit-assignment):

        K = bp_min + int(progress * (bp_max - bp_min)),  progress = min(1, step / (ratio * total_steps))

    `cfg.full_bp_from_start` (SFT) gives bp_max from step 1. A zero warm-up ratio or an unknown/zero
    `total_steps` means there is no warm-up to follow: K = bp_max. The baselines (transformer,
    looped, rins) have no warm-up: their fixed counts (`TrainConfig.final_bp_steps`).
    """
    if arch not in ("hrm", "trm"):
        return cfg.final_bp_steps(arch)
    lo, hi = int(cfg.bp_min_steps), int(cfg.bp_max_steps)
    if cfg.full_bp_from_start:
        return hi
    denom = float(cfg.bp_warmup_ratio) * float(total_steps)
    if denom <= 0.0:
        return hi
    progress = min(1.0, max(0.0, step / denom))
    return lo + int(progress * (hi - lo))
