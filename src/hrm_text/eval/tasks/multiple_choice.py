"""Shared by the multiple-choice tasks (MMLU, ARC-C, HellaSwag, Winogrande, BoolQ): option
lettering, the prompt shape, answer-key parsing and the one-letter scorer with 1/n credit for an
invalid answer (docs/ARCHITECTURE.md#evaluation-protocol).

Each question ends in `Answer:` so the response is one letter; few-shot examples are the same
blocks followed by their letter, folded into the one instruction the model sees.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hrm_text.eval import scoring
from hrm_text.eval.tasks.base import BenchmarkSpec, EvalItem, PaperTask

__all__ = [
    "MC_NEW_TOKENS",
    "MC_PREAMBLE",
    "options",
    "question_block",
    "mc_instruction",
    "answer_reference",
    "letter_index",
    "score_multiple_choice",
]

MC_NEW_TOKENS = 8  # one letter (+ end token); a little slack so "(B)" is not cut into a non-answer
MC_PREAMBLE = "Answer each multiple-choice question with the letter of the correct option only."


def options(choices: Sequence[str]) -> str:
    return "\n".join(f"{scoring.LETTERS[i]}. {c}" for i, c in enumerate(choices))


def question_block(ex: Mapping[str, Any]) -> str:
    """One question (without its answer), ending in `Answer:` so the response is one letter."""
    return f"Question: {ex['question']}\n{options(ex['choices'])}\nAnswer:"


def mc_instruction(
    preamble: str,
    block: Callable[[Mapping[str, Any]], str],
    ex: Mapping[str, Any],
    shots: Sequence[Mapping[str, Any]],
) -> str:
    """The one instruction the model sees: preamble, solved shots, then the open question."""
    parts = [preamble]
    parts += [f"{block(s)} {scoring.LETTERS[s['answer']]}" for s in shots]
    parts.append(block(ex))
    return "\n\n".join(parts)


def answer_reference(ex: Mapping[str, Any]) -> Any:
    """The correct option's index."""
    return ex["answer"]


def letter_index(key: Any, labels: Sequence[str]) -> int:
    """Index of an answer key among option labels: the label itself, a 1-based number when the
    labels are not numbers, or a letter."""
    key = str(key).strip()
    if key in labels:
        return list(labels).index(key)
    if key.isdigit() and 1 <= int(key) <= len(labels) and not any(lbl.isdigit() for lbl in labels):
        return int(key) - 1
    if len(key) == 1 and key.upper() in scoring.LETTERS[: len(labels)]:
        return scoring.LETTERS.index(key.upper())
    raise ValueError(f"answer key {key!r} not among labels {list(labels)}")


def score_multiple_choice(item: EvalItem, generation: Any) -> dict[str, float]:
    """Accuracy of one generated letter (1/n credit when invalid) and whether it was invalid."""
    n = int(item.n_choices or 0)
    invalid = scoring.extract_letter(generation, n) is None
    return {"acc": scoring.score_multiple_choice(generation, int(item.reference), n),
            "invalid": 1.0 if invalid else 0.0}


def mc_task(spec: BenchmarkSpec, normalize: Callable[..., Any], block: Callable[[Mapping[str, Any]], str]) -> PaperTask:
    """A one-letter multiple-choice task: shared preamble, `block` per question, letter scoring."""

    def build_instruction(ex: Mapping[str, Any], shots: Sequence[Mapping[str, Any]]) -> str:
        return mc_instruction(MC_PREAMBLE, block, ex, shots)

    return PaperTask(
        name=spec.name, score=score_multiple_choice, primary="acc", spec=spec, normalize=normalize,
        build_instruction=build_instruction, reference=answer_reference,
    )
