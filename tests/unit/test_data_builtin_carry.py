"""The built-in `arith_carry` split: full-carry additions, held-out rows apart from the GRPO prompts."""

from __future__ import annotations

import random

from hrm_text.data.builtin import SIZES, _arith_carry_problem, _arith_carry_rows, _is_heldout_problem


def carry_columns(a: int, b: int) -> int:
    """Number of columns of a + b that produce a carry (counted from the units digit): the test's
    own count, independent of how the generator builds full-carry problems."""
    n = c = 0
    while a or b or c:
        c = 1 if a % 10 + b % 10 + c >= 10 else 0
        n += c
        a, b = a // 10, b // 10
    return n


def test_carry_columns():
    assert carry_columns(478, 596) == 3
    assert carry_columns(999, 1) == 3
    assert carry_columns(5, 5) == 1
    assert carry_columns(123, 456) == 0
    assert carry_columns(150, 50) == 1  # tens only
    assert carry_columns(0, 0) == 0


def test_carry_problems_carry_in_every_column():
    rng = random.Random(0)
    for digits, pad in ((3, True), (5, False), (1, True)):
        for _ in range(300):
            q, ans = _arith_carry_problem(rng, digits, pad)
            a, b = (int(x) for x in q.rstrip("=").split("+"))
            assert a < 10**digits and b < 10**digits
            assert carry_columns(a, b) == digits, q
            assert int(ans) == a + b and ans[0] == "1" and len(ans) == digits + 1  # the carry made a new digit
            if pad:
                assert q == f"{a:0{digits}d}+{b:0{digits}d}="


def test_carry_rows_heldout_and_rl_partitions_are_disjoint():
    d = SIZES["quickstart"].arith_digits[1]
    held = _arith_carry_rows(11, True, 200, d, True)
    rl = _arith_carry_rows(12, False, 400, d, True)
    hq, rq = [r["instruction"] for r in held], [r["instruction"] for r in rl]
    assert len(set(hq)) == 200 and len(set(rq)) == 400  # distinct rows
    assert all(_is_heldout_problem(q) for q in hq) and not any(_is_heldout_problem(q) for q in rq)
    assert not set(hq) & set(rq)
    assert held == _arith_carry_rows(11, True, 200, d, True)  # deterministic given the seed
    # a space smaller than asked for ends instead of looping: 1-digit full-carry sums are 45 problems
    assert len(_arith_carry_rows(0, True, 50, 1, True)) <= 45
