"""Scoring rules of the paper's evaluation protocol (docs/ARCHITECTURE.md#evaluation-protocol).

Every public function here takes raw model output and must never raise on it: a generation may be
empty, cut off mid-expression (unbalanced braces), enormous, or pure noise, and one bad output must
cost that item its score, not the whole evaluation run. Reference-side parsing may raise, because a
malformed reference is a data bug the user must see.

Rules implemented:
  * multiple choice: the model must generate one letter; an invalid or ambiguous answer earns
    1/n credit (n = number of choices), i.e. the expected score of a uniform guess, so that
    format failures neither inflate nor unduly punish accuracy.
  * GSM8K: the last `\\boxed{...}` (else the whole output) parsed as an integer.
  * MATH: symbolic equivalence of the last `\\boxed{...}` with the reference, through
    `math_verify` when installed; a normalised-string comparison otherwise (and always first).
  * DROP: exact match and F1 with the official DROP answer normalisation and multi-span bag
    matching (re-implemented from the published description of the metric).
"""

from __future__ import annotations

import re
import string
import threading
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "LETTERS",
    "extract_boxed_all",
    "last_boxed",
    "extract_letter",
    "score_multiple_choice",
    "parse_integer",
    "gsm8k_reference_answer",
    "extract_gsm8k_answer",
    "score_gsm8k",
    "normalize_math_answer",
    "math_answers_equivalent",
    "math_reference_answer",
    "score_math",
    "drop_normalize",
    "drop_em_f1",
    "drop_prediction_spans",
    "score_drop",
    "score_exact",
    "score_sudoku",
    "math_verify_available",
]

LETTERS = string.ascii_uppercase

# Guards against pathological generations: parsing work stays linear and bounded.
_MAX_ANSWER_CHARS = 2_000  # a boxed answer longer than this is treated as garbage
_MAX_INT_DIGITS = 200  # beyond this a "number" is noise (and int() would hit Python's digit limit)
_MAX_SYMBOLIC_CHARS = 400  # longer answers skip sympy (parsing can blow up) and use strings only


# ---------------------------------------------------------------------------------------------
# \boxed{...} extraction


def _brace_pairs(text: str) -> dict[int, int]:
    """Map each `{` index to its closing `}` index, in one linear pass; unclosed braces are absent.

    Escaped braces (`\\{`, `\\}`) are content, not structure: `\\boxed{\\{1,2\\}}` is the set {1,2}.
    One pass (not a scan per box) keeps a generation of thousands of unclosed boxes linear.
    """
    pairs: dict[int, int] = {}
    stack: list[int] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2  # skip the escaped character, whatever it is
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            pairs[stack.pop()] = i
        i += 1
    return pairs


_BOX_START = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _unwrap_box(content: str) -> str:
    """`\\boxed{\\boxed{5}}` -> `5`: peel boxes that wrap the whole content (iteratively, so
    deeply nested garbage cannot exhaust the recursion limit)."""
    for _ in range(100):
        stripped = content.strip()
        m = _BOX_START.match(stripped)
        if not m:
            break
        j = m.end()
        while j < len(stripped) and stripped[j] == " ":
            j += 1
        if j >= len(stripped) or stripped[j] != "{":
            break
        close = _brace_pairs(stripped).get(j, -1)
        if close != len(stripped) - 1:
            break
        content = stripped[j + 1 : close]
    return content.strip()


def extract_boxed_all(text: Any) -> list[str]:
    """Contents of every top-level `\\boxed{...}` / `\\fbox{...}` in order of appearance.

    Handles nested braces and the brace-less `\\boxed 5` form; a box whose braces never close
    (a generation cut off by the token limit) is skipped rather than guessed at. A box inside a
    box yields only the outer one, whose content is then unwrapped (`\\boxed{\\boxed{5}}` -> `5`).
    """
    if not isinstance(text, str) or not text:
        return []
    pairs: dict[int, int] | None = None
    found: list[str] = []
    pos = 0
    n = len(text)
    while True:
        m = _BOX_START.search(text, pos)
        if not m:
            break
        j = m.end()
        while j < n and text[j] == " ":
            j += 1
        if j < n and text[j] == "{":
            if pairs is None:
                pairs = _brace_pairs(text)
            end = pairs.get(j, -1)
            if end < 0:
                pos = j + 1
                continue
            content = text[j + 1 : end]
            pos = end + 1
        else:
            bare = re.match(r"[^\s$]+", text[j:])
            if not bare or j == m.end():  # the brace-less form needs a separating space
                pos = j
                continue
            content = bare.group(0)
            pos = j + bare.end()
        found.append(_unwrap_box(content))
    return found


def last_boxed(text: Any) -> str | None:
    """The last boxed answer in `text`, or None: the protocol's answer for GSM8K and MATH."""
    boxes = extract_boxed_all(text)
    return boxes[-1] if boxes else None


# ---------------------------------------------------------------------------------------------
# Multiple choice


_ANSWER_IS = re.compile(
    r"(?i:answer|option|choice)\s*(?i:is|:|=)?\s*(?i:option\s*)?[\(\[]?\s*([A-Z])\s*[\)\]]?(?![A-Za-z])"
)
_LEADING_LETTER = re.compile(r"^[\(\[\*]*\s*([A-Z])\s*[\)\]\*]?(?=$|[\s.,:;)\]*/|])")
_SECOND_LETTER = re.compile(r"^[\)\]\*]?\s*(?:,|/|\||&|\bor\b|\band\b)\s*[\(\[]?\s*([A-Z])(?![A-Za-z])")


def extract_letter(generation: Any, n_choices: int) -> str | None:
    """The single option letter a generation commits to, or None if invalid or ambiguous.

    The protocol expects exactly one generated letter. We accept the common harmless wrappers a
    model trained on instruction data produces ("B", " B.", "(B)", "B) Paris", "Answer: B", "The
    answer is B") but refuse anything that names two options ("A or B", "A, C") or a letter outside
    the first `n_choices`, so that hedging never earns more than the 1/n a guess would.
    """
    if not isinstance(generation, str) or n_choices <= 0:
        return None
    text = generation.strip()
    if not text:
        return None
    text = text[:_MAX_ANSWER_CHARS]
    valid = LETTERS[: min(n_choices, len(LETTERS))]

    # A bare one-character answer, case-insensitively ("b" is unambiguous on its own).
    if len(text) == 1:
        letter = text.upper()
        return letter if letter in valid else None

    # "Answer: B" / "The answer is (B)": every such statement must agree.
    stated = {m.group(1).upper() for m in _ANSWER_IS.finditer(text)}
    stated &= set(LETTERS)
    if stated:
        if len(stated) > 1:
            return None
        letter = stated.pop()
        return letter if letter in valid else None

    # Otherwise the output must start with the letter ("B", "B.", "(B)", "B) the ending ...").
    m = _LEADING_LETTER.match(text)
    if not m:
        return None
    letter = m.group(1)
    rest = text[m.end() :]
    second = _SECOND_LETTER.match(rest)
    if second and second.group(1) != letter:
        return None  # "A or B", "A/B", "A, C": a hedge, not an answer
    return letter if letter in valid else None


def score_multiple_choice(generation: Any, answer_index: int, n_choices: int) -> float:
    """1.0 for the right letter, 0.0 for a wrong valid letter, 1/n for an invalid answer."""
    if n_choices <= 0:
        return 0.0
    letter = extract_letter(generation, n_choices)
    if letter is None:
        return 1.0 / n_choices
    return 1.0 if LETTERS.index(letter) == answer_index else 0.0


# ---------------------------------------------------------------------------------------------
# GSM8K: integers


_TEXT_WRAPPERS = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|textit|operatorname)\s*\{([^{}]*)\}")
_INT_RE = re.compile(r"([-+]?\d+)(?:\.0*)?")
_UNIT_TAIL = re.compile(r"(?:\s*[A-Za-z][A-Za-z'\-]*\.?){1,3}")


def parse_integer(text: Any) -> int | None:
    """Parse `text` as an integer, tolerating how models and LaTeX write money and thousands.

    Accepts `1,234`, `1{,}234`, `\\$18`, `$18$`, `18.0`, `18.00`, `-5`, unicode minus, `25\\%`,
    `\\text{18}`, a short unit tail (`18 dollars`, `18\\text{ apples}`), a trailing period and a
    leading `x = `. Rejects non-integers (`18.5`) and anything else, returning None.
    """
    if not isinstance(text, str):
        return None
    s = text.strip()
    if not s or len(s) > _MAX_ANSWER_CHARS:
        return None
    for _ in range(3):  # unwrap nested \text{...}
        s = _TEXT_WRAPPERS.sub(r" \1 ", s)
    for token in ("\\$", "$", "\\%", "%", "\\!", "\\,", "\\;", "\\:", "\\ ", "{,}", "\\left", "\\right"):
        s = s.replace(token, " " if token in ("\\ ",) else "")
    s = s.replace("\u2212", "-").replace("\u2013", "-").replace("{", "").replace("}", "")
    if "=" in s:
        s = s.rsplit("=", 1)[1]
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # thousands separators only
    s = s.strip().rstrip(".").strip()
    m = _INT_RE.match(s)
    if not m:
        return None
    tail = s[m.end() :]
    if tail and not _UNIT_TAIL.fullmatch(tail):
        return None
    digits = m.group(1)
    if len(digits) > _MAX_INT_DIGITS:
        return None
    try:
        return int(digits)
    except ValueError:
        return None


def gsm8k_reference_answer(answer_field: str | int) -> int:
    """The integer after `####` in a GSM8K `answer` field (raises on a malformed reference)."""
    if isinstance(answer_field, int):
        return answer_field
    tail = str(answer_field).rsplit("####", 1)[-1]
    value = parse_integer(tail)
    if value is None:
        raise ValueError(f"GSM8K reference has no integer after '####': {answer_field[-80:]!r}")
    return value


def extract_gsm8k_answer(generation: Any) -> int | None:
    """The protocol's answer: the last `\\boxed{}` if any, else the whole output, as an integer."""
    if not isinstance(generation, str):
        return None
    boxed = last_boxed(generation)
    return parse_integer(boxed if boxed is not None else generation)


def score_gsm8k(generation: Any, reference: int) -> float:
    """1.0 when the extracted integer equals the reference, else 0.0."""
    value = extract_gsm8k_answer(generation)
    return 1.0 if value is not None and value == reference else 0.0


# ---------------------------------------------------------------------------------------------
# MATH: symbolic equivalence


_SPACING_MACROS = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle", "\\quad", "\\qquad")


def normalize_math_answer(answer: Any) -> str:
    """A canonical string for a MATH answer, for the comparison that needs no sympy.

    Removes what does not change the value (spacing macros, `\\left`/`\\right`, `$`, degree signs,
    `\\text{}` wrappers around units, a leading `x =`), unifies `\\dfrac`/`\\tfrac` to `\\frac`,
    braces short forms (`\\frac12` -> `\\frac{1}{2}`, `\\sqrt3` -> `\\sqrt{3}`), and canonicalises
    plain decimals (`.5` -> `0.5`, `2.0` -> `2`). Two answers with the same normal form are equal;
    different normal forms may still be equal, which is what `math_verify` is for.
    """
    if not isinstance(answer, str):
        return ""
    s = answer.strip()[:_MAX_ANSWER_CHARS]
    s = s.replace("\n", "")
    for macro in _SPACING_MACROS:
        s = s.replace(macro, "")
    s = s.replace("\\ ", "")
    for _ in range(3):
        s = re.sub(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\u00b0", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d+|[a-zA-Z])", r"\\sqrt{\1}", s)
    s = re.sub(r"^\s*[a-zA-Z]\s*=\s*", "", s)  # "x = 5" -> "5" (only a single-letter left side)
    s = s.replace(" ", "")
    s = s.rstrip(".")
    s = re.sub(r"(?<![\d.])\.(\d)", r"0.\1", s)  # ".5" -> "0.5"
    if re.fullmatch(r"-?\d+\.0+", s):
        s = s.split(".")[0]
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", s):
        s = s.replace(",", "")
    return s


def math_verify_available() -> bool:
    """Whether the `math-verify` package (the `eval` extra) can be imported."""
    try:
        import math_verify  # noqa: F401
    except Exception:
        return False
    return True


def _symbolic_equal(reference: str, predicted: str) -> bool:
    """`math_verify` equivalence; False on any failure, timeout or missing package.

    math_verify enforces its timeouts with SIGALRM, which only works in the main thread, so
    elsewhere (e.g. a server's worker thread) we disable its timeout instead of crashing.
    """
    try:
        from math_verify import parse, verify
    except Exception:
        return False
    in_main = threading.current_thread() is threading.main_thread()
    timeout = 5 if in_main else None
    try:
        gold = parse(f"\\boxed{{{reference}}}", parsing_timeout=timeout)
        pred = parse(f"\\boxed{{{predicted}}}", parsing_timeout=timeout)
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=timeout))
    except BaseException as e:  # math_verify/sympy raise many things, incl. TimeoutException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return False


def math_answers_equivalent(predicted: Any, reference: str, use_symbolic: bool = True) -> bool:
    """Whether a predicted MATH answer (boxed content) equals the reference answer.

    Normalised-string equality first (cheap and exact); then, if allowed and installed,
    `math_verify` symbolic equivalence (`0.5` == `\\frac{1}{2}`, `x^2+2x` == `2x+x^2`).
    """
    if not isinstance(predicted, str) or not predicted.strip() or not isinstance(reference, str):
        return False
    if normalize_math_answer(predicted) == normalize_math_answer(reference):
        return True
    if not use_symbolic:
        return False
    if len(predicted) > _MAX_SYMBOLIC_CHARS or len(reference) > _MAX_SYMBOLIC_CHARS:
        return False
    return _symbolic_equal(reference, predicted)


def math_reference_answer(row: dict[str, Any]) -> str:
    """The reference answer of a MATH row: its `answer` field (MATH-500 style) or the last box of
    its `solution` (the original hendrycks layout, which has no separate answer)."""
    answer = row.get("answer")
    if isinstance(answer, str) and answer.strip():
        return answer.strip()
    boxed = last_boxed(row.get("solution", ""))
    if boxed is None:
        raise ValueError(f"MATH row has neither 'answer' nor a \\boxed{{}} in 'solution': {str(row)[:120]}")
    return boxed


def score_math(generation: Any, reference: str, use_symbolic: bool = True) -> float:
    """1.0 when the last `\\boxed{}` of the generation is equivalent to the reference, else 0.0."""
    predicted = last_boxed(generation)
    if predicted is None:
        return 0.0
    return 1.0 if math_answers_equivalent(predicted, reference, use_symbolic) else 0.0


# ---------------------------------------------------------------------------------------------
# DROP: EM and F1 with the official answer normalisation


_DROP_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _drop_normalize_token(token: str) -> str:
    """Lower-case; drop punctuation unless the token is a number; write numbers canonically
    (`3`, `3.0` and `3.00` all become `3.0`); remove articles; squeeze spaces."""
    t = token.lower()
    if not _is_number(t):
        t = "".join(ch for ch in t if ch not in _PUNCT)
    if _is_number(t):
        try:
            t = str(float(t))
        except (ValueError, OverflowError):
            pass
    t = _DROP_ARTICLES.sub(" ", t)
    return " ".join(t.split())


def drop_normalize(text: str) -> str:
    """DROP answer normalisation of one span: split on spaces and hyphens, normalise each token,
    keep the non-empty ones."""
    tokens = [_drop_normalize_token(t) for t in re.split(r" |-", text)]
    return " ".join(t for t in tokens if t).strip()


def _answer_bags(spans: Sequence[str]) -> tuple[list[str], list[set[str]]]:
    normalized = [drop_normalize(s) for s in spans]
    return normalized, [set(n.split()) for n in normalized]


def _bag_numbers(bag: set[str]) -> set[str]:
    return {t for t in bag if _is_number(t)}


def _bag_f1(pred: set[str], gold: set[str]) -> float:
    inter = len(pred & gold)
    precision = 1.0 if not pred else inter / len(pred)
    recall = 1.0 if not gold else inter / len(gold)
    if precision == 0.0 and recall == 0.0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _best_alignment(scores: list[list[float]]) -> list[float]:
    """Per-row scores of the one-to-one gold->prediction alignment with the largest total.

    Exact (bitmask DP over the smaller side), so it needs no scipy; DROP answers have at most a
    handful of spans, and generations with absurd span counts are truncated by the caller.
    """
    n_rows = len(scores)
    n_cols = len(scores[0]) if scores else 0
    if n_rows == 0 or n_cols == 0:
        return [0.0] * n_rows
    transpose = n_cols > n_rows
    mat = [list(r) for r in zip(*scores)] if transpose else scores
    rows, cols = len(mat), len(mat[0])  # cols <= rows now
    # dp over rows: state = set of used columns
    best: dict[int, tuple[float, tuple[int, ...]]] = {0: (0.0, ())}
    for r in range(rows):
        nxt: dict[int, tuple[float, tuple[int, ...]]] = {}
        for mask, (total, assign) in best.items():
            options = [(-1, 0.0)] + [(c, mat[r][c]) for c in range(cols) if not mask & (1 << c)]
            for c, val in options:
                m2 = mask | (1 << c) if c >= 0 else mask
                cand = (total + val, assign + (c,))
                if m2 not in nxt or cand[0] > nxt[m2][0]:
                    nxt[m2] = cand
        best = nxt
    _, assign = max(best.values(), key=lambda x: x[0])
    if not transpose:
        return [mat[r][c] if c >= 0 else 0.0 for r, c in enumerate(assign)]
    per_col = [0.0] * cols  # cols here = original rows
    for r, c in enumerate(assign):
        if c >= 0:
            per_col[c] = mat[r][c]
    return per_col


def drop_em_f1(predicted: Sequence[str], gold: Sequence[str]) -> tuple[float, float]:
    """EM and F1 of a predicted span list against one gold span list (official DROP semantics).

    EM: the sets of normalised spans are equal and the span counts agree. F1: spans are aligned
    one to one to maximise the summed bag-of-token F1, where a pair whose gold side has numbers
    and shares none with the prediction scores 0; the summed score is averaged over the larger
    span count, so missing or extra spans cost recall or precision. Rounded to 2 decimals.
    """
    pred_norm, pred_bags = _answer_bags(predicted)
    gold_norm, gold_bags = _answer_bags(gold)
    em = 1.0 if set(pred_norm) == set(gold_norm) and len(pred_norm) == len(gold_norm) else 0.0
    scores: list[list[float]] = []
    for g in gold_bags:
        g_nums = _bag_numbers(g)
        row = []
        for p in pred_bags:
            if g_nums and not (g_nums & _bag_numbers(p)):
                row.append(0.0)
            else:
                row.append(_bag_f1(p, g))
        scores.append(row)
    aligned = _best_alignment(scores) if scores and pred_bags else [0.0] * len(gold_bags)
    denom = max(len(gold_bags), len(pred_bags), 1)
    f1 = round(sum(aligned) / denom, 2)
    return em, f1


_DROP_PREFIX = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*", re.IGNORECASE)
_MAX_DROP_SPANS = 12


def drop_prediction_spans(generation: Any, multi_span: bool) -> list[str]:
    """Turn a generation into predicted spans.

    Only the first non-empty line counts (a model that keeps talking is not penalised for the
    chatter after its answer, nor credited for it), an `Answer:` prefix and a trailing period are
    dropped. When the question's gold answer has several spans, the prediction is split the way
    the few-shot examples join them (`, `, `;`, ` and `); commas inside numbers never split.
    """
    if not isinstance(generation, str):
        return [""]
    text = ""
    for line in generation[:_MAX_ANSWER_CHARS].splitlines():
        if line.strip():
            text = line.strip()
            break
    text = _DROP_PREFIX.sub("", text).strip()
    if text.endswith(".") and not _is_number(text):
        text = text[:-1].strip()
    if not multi_span:
        return [text]
    parts = re.split(r"(?<!\d),(?!\d{3})|,(?=\s)|;|\band\b", text)
    spans = [p.strip() for p in parts if p and p.strip()]
    return spans[:_MAX_DROP_SPANS] or [""]


def score_drop(generation: Any, golds: Iterable[Sequence[str]]) -> tuple[float, float]:
    """(EM, F1) of a generation against every acceptable gold answer; the best of each is kept,
    as DROP does with its validated answers."""
    best_em, best_f1 = 0.0, 0.0
    for gold in golds:
        gold = [g for g in gold if isinstance(g, str)]
        if not gold:
            continue
        spans = drop_prediction_spans(generation, multi_span=len(gold) > 1)
        em, f1 = drop_em_f1(spans, gold)
        best_em, best_f1 = max(best_em, em), max(best_f1, f1)
    return best_em, best_f1


# ---------------------------------------------------------------------------------------------
# Built-in suite


def score_exact(generation: Any, reference: str) -> float:
    """Exact match of the stripped generation with the stripped reference (built-in corpus)."""
    if not isinstance(generation, str):
        return 0.0
    return 1.0 if generation.strip() == str(reference).strip() else 0.0



# ---------------------------------------------------------------------------------------------
# Sudoku validity


def _sudoku_cells(text: str) -> list[int] | None:
    """The 81 cells of a 9x9 grid written as 9 lines of digits ('.' or '0' = empty), else None."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    lines = lines[-9:]
    if len(lines) != 9 or any(len(ln) != 9 for ln in lines):
        return None
    cells = []
    for ln in lines:
        for ch in ln:
            if ch in ".0":
                cells.append(0)
            elif ch.isdigit():
                cells.append(int(ch))
            else:
                return None
    return cells


def score_sudoku(generation: Any, puzzle: str) -> float:
    """1.0 when the generation is a complete, valid 9x9 Sudoku that keeps every given of `puzzle`
    (the instruction's grid): any valid solution counts, not only the reference one."""
    if not isinstance(generation, str) or len(generation) > _MAX_ANSWER_CHARS:
        return 0.0
    grid = _sudoku_cells(generation)
    givens = _sudoku_cells(puzzle)
    if grid is None or givens is None or 0 in grid:
        return 0.0
    if any(g and g != v for g, v in zip(givens, grid)):
        return 0.0
    full = set(range(1, 10))
    for i in range(9):
        row = grid[i * 9 : i * 9 + 9]
        col = grid[i::9]
        r0, c0 = (i // 3) * 3, (i % 3) * 3
        box = [grid[(r0 + dr) * 9 + c0 + dc] for dr in range(3) for dc in range(3)]
        if set(row) != full or set(col) != full or set(box) != full:
            return 0.0
    return 1.0
