"""Rewards for GRPO: built-in verifiable scorers (reusing `eval.scoring`) or a user function.

A reward function is `fn(completion: str, row: dict) -> float`, where `row` is the prompt's JSONL
row (`instruction`, `condition`, `response` = the reference, plus any other fields). It must not
raise on a completion; an exception is caught, counted and scored 0 by `safe_reward`.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Callable

from hrm_text.eval import scoring

log = logging.getLogger(__name__)

RewardFn = Callable[[str, dict[str, Any]], float]


def exact_reward(completion: str, row: dict[str, Any]) -> float:
    """Built-in arithmetic: exact match of the stripped answer."""
    return scoring.score_exact(completion, str(row.get("response", "")))


def digits_reward(completion: str, row: dict[str, Any]) -> float:
    """Built-in arithmetic with partial credit: the fraction of the reference's characters that the
    answer has at the same place counted from the units digit (right-aligned), divided by the
    longer of the two lengths, so a missing or an extra character costs one place. 1.0 only for an
    exact match (then `pass_rate` still reports exact-match); a wrong answer scores at most
    (n-1)/n. Gives a learning signal where every sampled answer misses exact-match, e.g. sums one
    digit longer than the training ones, where exact-match rewards are all 0 and every group has
    zero variance."""
    if exact_reward(completion, row) == 1.0:  # the same exact-match test as the `exact` reward
        return 1.0
    got, ref = completion.strip(), str(row.get("response", "")).strip()
    n = max(len(got), len(ref))
    if n == 0:
        return 0.0
    same = sum(a == b for a, b in zip(reversed(got), reversed(ref)))
    return same / n  # < 1: equal strings of equal length returned above


def dm_math_reward(completion: str, row: dict[str, Any]) -> float:
    """DeepMind mathematics: exact match, else MATH-style normalised equality (`0.5` == `.5`)."""
    ref = str(row.get("response", ""))
    if scoring.score_exact(completion, ref):
        return 1.0
    return 1.0 if scoring.math_answers_equivalent(completion.strip(), ref, use_symbolic=False) else 0.0


def sudoku_reward(completion: str, row: dict[str, Any]) -> float:
    """Sudoku: 1 for any valid completed grid that keeps the puzzle's givens (not only the reference)."""
    return scoring.score_sudoku(completion, str(row.get("instruction", "")))


def boxed_math_reward(completion: str, row: dict[str, Any]) -> float:
    """`\\boxed{}` answer equivalent to the reference (math_verify when installed)."""
    return scoring.score_math(completion, str(row.get("response", "")))


BUILTIN: dict[str, RewardFn] = {
    "exact": exact_reward,
    "digits": digits_reward,
    "dm_math": dm_math_reward,
    "sudoku": sudoku_reward,
    "boxed_math": boxed_math_reward,
}


def auto_reward(completion: str, row: dict[str, Any]) -> float:
    """Pick the built-in scorer from the row: Sudoku puzzles, DM-math rows (a `module` field),
    `\\boxed{}` references, else exact match."""
    if str(row.get("instruction", "")).startswith("Solve this sudoku"):
        return sudoku_reward(completion, row)
    if row.get("module"):
        return dm_math_reward(completion, row)
    if "\\boxed" in str(row.get("solution", "")) or row.get("boxed"):
        return boxed_math_reward(completion, row)
    return exact_reward(completion, row)


def load_reward(spec: str) -> RewardFn:
    """'auto', a built-in name, or 'package.module:function'."""
    if spec == "auto":
        return auto_reward
    if spec in BUILTIN:
        return BUILTIN[spec]
    if ":" not in spec:
        raise ValueError(f"rl.reward={spec!r}: use auto, {', '.join(BUILTIN)} or 'module:function'")
    mod_name, fn_name = spec.split(":", 1)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"rl.reward={spec!r}: cannot import {mod_name}: {e}") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ValueError(f"rl.reward={spec!r}: {mod_name} has no function {fn_name}")
    return fn


class SafeReward:
    """Calls the reward function; an exception or a non-number scores 0 and is counted."""

    def __init__(self, fn: RewardFn) -> None:
        self.fn = fn
        self.errors = 0

    def __call__(self, completion: str, row: dict[str, Any]) -> float:
        try:
            r = float(self.fn(completion, row))
        except Exception as e:  # a user reward must not end a long run
            self.errors += 1
            if self.errors <= 3:
                log.warning("reward function failed (%s: %s); scored 0", type(e).__name__, e)
            return 0.0
        if r != r:  # NaN
            self.errors += 1
            return 0.0
        return r
