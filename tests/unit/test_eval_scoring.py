"""Scoring rules of docs/ARCHITECTURE.md#evaluation-protocol on hand-made cases, including malformed
generations."""

from __future__ import annotations

import itertools
import random
import threading

import pytest

from hrm_text.eval import scoring as S

# Generations a model can emit when it goes wrong; no rule may raise on any of them.
MALFORMED = [
    "",
    "   \n\t ",
    None,
    12345,
    "\\boxed{",
    "\\boxed{{{{{{1",
    "}}}}\\boxed}",
    "\\boxed{\\frac{1}{2}",
    "\\boxed",
    "\\boxed{}",
    "\\fbox{\\boxed{",
    "A" * 200_000,
    "\\boxed{" + "9" * 50_000 + "}",
    "9" * 10_000,
    "{" * 10_000,
    "\\boxed{" * 5_000,
    "\x00\x01\ufffd",
    "Answer: " * 1000,
    "\\boxed{\\frac{\\sqrt{}}{}}",
    "\\boxed{x^{2}+}",
    "\\boxed{" * 3_000 + "1" + "}" * 3_000,  # deeply nested yet balanced
]


# ---------------------------------------------------------------------------------------------
# boxed extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{42}.", ["42"]),
        ("\\boxed{1} then \\boxed{2}", ["1", "2"]),
        ("\\boxed{\\frac{a}{b^{2}}}", ["\\frac{a}{b^{2}}"]),
        ("\\boxed{\\boxed{5}}", ["5"]),
        ("\\boxed{\\{1,2\\}}", ["\\{1,2\\}"]),
        ("\\boxed 7 is it", ["7"]),
        ("\\fbox{3}", ["3"]),
        ("\\boxed{ 12 }", ["12"]),
        ("\\boxed{3", []),  # cut off: not guessed
        ("\\boxed{1} \\boxed{2", ["1"]),  # the last complete box wins
        ("\\boxedfoo{3}", []),
        ("no box", []),
    ],
)
def test_extract_boxed(text: str, expected: list[str]) -> None:
    assert S.extract_boxed_all(text) == expected
    assert S.last_boxed(text) == (expected[-1] if expected else None)


# ---------------------------------------------------------------------------------------------
# multiple choice


@pytest.mark.parametrize(
    "gen, letter",
    [
        ("B", "B"),
        (" b ", "B"),
        ("B.", "B"),
        ("(C)", "C"),
        ("[D]", "D"),
        ("**A**", "A"),
        ("B) Paris", "B"),
        ("A. The man starts pulling up roofing.", "A"),
        ("Answer: C", "C"),
        ("The answer is (D).", "D"),
        ("The correct option is B", "B"),
        ("B\n", "B"),
    ],
)
def test_extract_letter_valid(gen: str, letter: str) -> None:
    assert S.extract_letter(gen, 4) == letter


@pytest.mark.parametrize(
    "gen",
    [
        "A or B", "A/B", "A, C", "A and D", "Answer: A. Answer: B",  # hedges
        "E", "Z", "(F)",  # outside the 4 options
        "I think it is blue", "the answer is a cat", "Paris", "", "   ", "42", "?",
    ],
)
def test_extract_letter_invalid_or_ambiguous(gen: str) -> None:
    assert S.extract_letter(gen, 4) is None


def test_letter_range_depends_on_n_choices() -> None:
    assert S.extract_letter("B", 2) == "B"
    assert S.extract_letter("C", 2) is None
    assert S.extract_letter("C", 3) == "C"


@pytest.mark.parametrize("n", [2, 4, 5])
def test_multiple_choice_credit(n: int) -> None:
    assert S.score_multiple_choice("A", 0, n) == 1.0
    assert S.score_multiple_choice("B", 0, n) == 0.0
    assert S.score_multiple_choice("A or B", 0, n) == pytest.approx(1.0 / n)
    assert S.score_multiple_choice("", 1, n) == pytest.approx(1.0 / n)
    assert S.score_multiple_choice(S.LETTERS[n], 0, n) == pytest.approx(1.0 / n)  # out of range


def test_hedging_never_beats_a_guess() -> None:
    """Over all answers, an output naming every option earns exactly the guessing rate."""
    n = 4
    mean = sum(S.score_multiple_choice("A, B, C or D", k, n) for k in range(n)) / n
    assert mean == pytest.approx(1.0 / n)


# ---------------------------------------------------------------------------------------------
# GSM8K


@pytest.mark.parametrize(
    "text, value",
    [
        ("42", 42),
        ("-7", -7),
        ("\u22127", -7),
        ("1,234", 1234),
        ("1,234,567", 1234567),
        ("1{,}234", 1234),
        ("$18", 18),
        ("\\$18", 18),
        ("$18$", 18),
        ("18.0", 18),
        ("18.00", 18),
        ("18.", 18),
        ("25\\%", 25),
        ("\\text{18}", 18),
        ("18 dollars", 18),
        ("18\\text{ apples}", 18),
        ("x = 5", 5),
        ("18.5", None),
        ("1/2", None),
        ("twelve", None),
        ("12, 13", None),
        ("", None),
        ("9" * 500, None),
    ],
)
def test_parse_integer(text: str, value: int | None) -> None:
    assert S.parse_integer(text) == value


def test_gsm8k_reference() -> None:
    assert S.gsm8k_reference_answer("Natalia sold 48+24 = 72 clips.\n#### 72") == 72
    assert S.gsm8k_reference_answer("... #### 1,250,000") == 1250000
    with pytest.raises(ValueError):
        S.gsm8k_reference_answer("no marker and no number here")


@pytest.mark.parametrize(
    "gen, score",
    [
        ("48/2 = 24, and 48 + 24 = 72. The answer is \\boxed{72}.", 1.0),
        ("first \\boxed{70}, no wait, \\boxed{72}", 1.0),  # last box wins
        ("\\boxed{72} then \\boxed{70}", 0.0),
        ("\\boxed{\\$72.00}", 1.0),
        ("\\boxed{\\text{72 clips}}", 1.0),
        ("72", 1.0),  # no box: the whole output
        (" 72.\n", 1.0),
        ("The answer is 72", 0.0),  # no box, and the whole output is not an integer
        ("\\boxed{72.5}", 0.0),
        ("\\boxed{72", 0.0),  # cut off inside the box: whole output is not an integer
    ],
)
def test_score_gsm8k(gen: str, score: float) -> None:
    assert S.score_gsm8k(gen, 72) == score


def test_gsm8k_nested_braces_and_commas() -> None:
    assert S.score_gsm8k("\\boxed{{1{,}250{,}000}}", 1250000) == 1.0
    assert S.score_gsm8k("\\boxed{1,250,000}", 1250000) == 1.0


# ---------------------------------------------------------------------------------------------
# MATH


@pytest.mark.parametrize(
    "a, b",
    [
        ("\\dfrac{3}{4}", "\\frac{3}{4}"),
        ("\\frac34", "\\frac{3}{4}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("x = 5", "5"),
        ("90^\\circ", "90"),
        ("\\$5", "5"),
        (".5", "0.5"),
        ("2.0", "2"),
        ("\\sqrt2", "\\sqrt{2}"),
        ("10\\%", "10"),
        ("\\text{(B)}", "(B)"),
        ("1,000", "1000"),
    ],
)
def test_normalize_math_answer_equal(a: str, b: str) -> None:
    assert S.normalize_math_answer(a) == S.normalize_math_answer(b)


def test_normalize_math_answer_keeps_differences() -> None:
    assert S.normalize_math_answer("\\frac{3}{4}") != S.normalize_math_answer("\\frac{4}{3}")
    assert S.normalize_math_answer("2.5") != S.normalize_math_answer("25")
    assert S.normalize_math_answer("y = 2x") != S.normalize_math_answer("2")  # only x = <value>


def test_math_string_fallback_without_symbolic() -> None:
    assert S.score_math("so \\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", use_symbolic=False) == 1.0
    assert S.score_math("so \\boxed{0.75}", "\\frac{3}{4}", use_symbolic=False) == 0.0
    assert S.score_math("no box: 3/4", "\\frac{3}{4}") == 0.0


needs_math_verify = pytest.mark.skipif(not S.math_verify_available(), reason="math-verify not installed")


@needs_math_verify
@pytest.mark.parametrize(
    "pred, ref, ok",
    [
        ("0.75", "\\frac{3}{4}", True),
        ("\\frac{6}{8}", "\\frac34", True),
        ("2x + x^2", "x^2+2x", True),
        ("\\sqrt{8}", "2\\sqrt{2}", True),
        ("\\{2, -2\\}", "\\{-2, 2\\}", True),
        ("\\frac{4}{3}", "\\frac{3}{4}", False),
        ("x^2", "x^3", False),
    ],
)
def test_math_symbolic(pred: str, ref: str, ok: bool) -> None:
    assert S.score_math(f"Therefore \\boxed{{{pred}}}.", ref) == (1.0 if ok else 0.0)


@needs_math_verify
def test_math_verify_in_worker_thread() -> None:
    """math_verify's SIGALRM timeouts only work in the main thread; a server thread must not crash."""
    out: list[float] = []
    t = threading.Thread(target=lambda: out.append(S.score_math("\\boxed{0.5}", "\\frac{1}{2}")))
    t.start()
    t.join()
    assert out == [1.0]


def test_math_reference_answer() -> None:
    assert S.math_reference_answer({"answer": "5", "solution": "\\boxed{6}"}) == "5"
    assert S.math_reference_answer({"solution": "so $\\boxed{\\frac{1}{2}}$."}) == "\\frac{1}{2}"
    with pytest.raises(ValueError):
        S.math_reference_answer({"solution": "no box"})


# ---------------------------------------------------------------------------------------------
# DROP


@pytest.mark.parametrize(
    "text, norm",
    [
        ("The Bears", "bears"),
        ("Chaz Schilens.", "chaz schilens"),
        ("3", "3.0"),
        ("3.00", "3.0"),
        ("33-yard", "33.0 yard"),
        ("an apple, a pear", "apple pear"),
        ("  Multiple   spaces ", "multiple spaces"),
    ],
)
def test_drop_normalize(text: str, norm: str) -> None:
    assert S.drop_normalize(text) == norm


def test_drop_single_span() -> None:
    assert S.drop_em_f1(["the Bears"], ["Bears"]) == (1.0, 1.0)
    em, f1 = S.drop_em_f1(["Chaz"], ["Chaz Schilens"])
    assert em == 0.0 and f1 == pytest.approx(0.67)
    assert S.drop_em_f1([""], ["Bears"]) == (0.0, 0.0)


def test_drop_numbers_must_match() -> None:
    # token overlap ("yards") does not help when the gold's number is missing from the prediction
    assert S.drop_em_f1(["5 yards"], ["4 yards"]) == (0.0, 0.0)
    assert S.drop_em_f1(["4.0"], ["4"]) == (1.0, 1.0)
    em, f1 = S.drop_em_f1(["4 yards long"], ["4 yards"])
    assert em == 0.0 and f1 == pytest.approx(0.8)


def test_drop_multi_span_bag() -> None:
    gold = ["Chaz Schilens", "Vonta Leach"]
    assert S.drop_em_f1(["Vonta Leach", "Chaz Schilens"], gold) == (1.0, 1.0)  # order-free
    em, f1 = S.drop_em_f1(["Chaz Schilens"], gold)  # one of two spans: recall halves
    assert em == 0.0 and f1 == 0.5
    em, f1 = S.drop_em_f1(["Chaz Schilens", "Vonta Leach", "Oakland"], gold)  # an extra span
    assert em == 0.0 and f1 == pytest.approx(0.67)
    em, f1 = S.drop_em_f1(["Chaz Schilens", "Chaz Schilens"], gold)  # duplicates don't double count
    assert em == 0.0 and f1 == 0.5


def test_drop_alignment_is_optimal() -> None:
    """The DP alignment equals a brute force over permutations on random score matrices."""
    rng = random.Random(0)
    for _ in range(200):
        rows, cols = rng.randint(1, 5), rng.randint(1, 5)
        m = [[round(rng.random(), 2) for _ in range(cols)] for _ in range(rows)]
        best = 0.0
        if rows <= cols:
            for perm in itertools.permutations(range(cols), rows):
                best = max(best, sum(m[r][perm[r]] for r in range(rows)))
        else:
            for perm in itertools.permutations(range(rows), cols):
                best = max(best, sum(m[perm[c]][c] for c in range(cols)))
        assert sum(S._best_alignment(m)) == pytest.approx(best)


def test_drop_prediction_spans() -> None:
    assert S.drop_prediction_spans("Answer: the Bears.\nBecause ...", multi_span=False) == ["the Bears"]
    assert S.drop_prediction_spans("Smith, Jones and Brown", multi_span=True) == ["Smith", "Jones", "Brown"]
    assert S.drop_prediction_spans("1,000", multi_span=True) == ["1,000"]  # thousands stay whole
    assert S.drop_prediction_spans("Washington, D.C.", multi_span=False) == ["Washington, D.C"]


def test_score_drop_best_gold() -> None:
    golds = [["2"], ["two"]]
    assert S.score_drop("two", golds) == (1.0, 1.0)
    assert S.score_drop("Smith and Jones", [["Jones", "Smith"]]) == (1.0, 1.0)
    assert S.score_drop("1,000", [["1000"]]) == (1.0, 1.0)
    assert S.score_drop("", [["x"]]) == (0.0, 0.0)
    assert S.score_drop("x", []) == (0.0, 0.0)


# ---------------------------------------------------------------------------------------------
# robustness


@pytest.mark.parametrize("gen", MALFORMED, ids=range(len(MALFORMED)))
def test_no_rule_raises_on_malformed(gen: object) -> None:
    assert S.score_multiple_choice(gen, 0, 4) == pytest.approx(0.25)
    assert S.score_gsm8k(gen, 72) == 0.0
    assert S.score_math(gen, "\\frac{1}{2}") == 0.0
    assert S.score_drop(gen, [["Bears"], ["2", "3"]]) == (0.0, 0.0)
    assert S.score_exact(gen, "12") == 0.0


def test_exact_match() -> None:
    assert S.score_exact("  12\n", "12") == 1.0
    assert S.score_exact("12.0", "12") == 0.0
