"""GRPO's built-in `digits` reward: partial credit per digit, 1.0 only for an exact match."""

from __future__ import annotations

import random

from hrm_text.post.rewards import BUILTIN, exact_reward, load_reward


def test_digits_reward_partial_credit_right_aligned():
    digits = load_reward("digits")
    assert BUILTIN["digits"] is digits
    row = {"instruction": "0456+0789=", "response": "01245"}
    assert digits("01245", row) == 1.0
    assert digits(" 01245\n", row) == 1.0  # stripped, as exact-match
    assert digits("01246", row) == 4 / 5  # units digit wrong
    assert digits("11245", row) == 4 / 5
    assert digits("99999", row) == 0.0
    assert digits("1245", row) == 4 / 5  # aligned at the units digit: the 4 digits there are right, one place missing
    assert digits("001245", row) == 5 / 6  # one extra place
    assert digits("", row) == 0.0
    assert digits("", {"response": ""}) == 1.0


def test_digits_reward_is_one_exactly_when_exact_match():
    """pass_rate (reward >= 1) must stay exact-match under the shaped reward."""
    digits = load_reward("digits")
    rng = random.Random(0)
    for _ in range(2000):
        ref = f"{rng.randint(0, 99999):05d}"
        got = "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 7)))
        if rng.random() < 0.3:
            got = ref[: rng.randint(0, 5)] + got[:1] + ref[rng.randint(0, 5):]
        row = {"response": ref}
        r = digits(got, row)
        assert 0.0 <= r <= 1.0
        assert (r >= 1.0) == (exact_reward(got, row) == 1.0), (got, ref, r)
