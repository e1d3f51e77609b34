"""ARC-Challenge: grade-school science questions, 25-shot from the training split, one generated
letter (docs/ARCHITECTURE.md#evaluation-protocol)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hrm_text.eval.tasks.base import BenchmarkSpec, Example, row_id
from hrm_text.eval.tasks.multiple_choice import MC_NEW_TOKENS, letter_index, mc_task, question_block

SPEC = BenchmarkSpec(
    "arc_challenge", "ARC-C", "mc", 25, "test", "train", "direct", 4096, MC_NEW_TOKENS,
    "allenai/ai2_arc", ("ARC-Challenge",), {"test": "test", "train": "train"},
    ("ARC-Challenge-Test.jsonl + ARC-Challenge-Train.jsonl  (AI2 release: question.stem, question.choices, answerKey)",
     "ARC-Challenge/test-*.parquet + ARC-Challenge/train-*.parquet  (HF allenai/ai2_arc: choices.label/text, answerKey)"),
    exclude=("ARC-Easy", "arc-easy"),
)


def normalize(row: Mapping[str, Any]) -> Example:
    q = row["question"]
    if isinstance(q, Mapping):  # AI2 release: question.stem, question.choices[{label, text}]
        stem = q["stem"]
        raw = q["choices"]
        labels = [str(c["label"]) for c in raw]
        texts = [str(c["text"]) for c in raw]
    else:  # HF: question str, choices {text: [...], label: [...]}
        stem = q
        labels = [str(x) for x in row["choices"]["label"]]
        texts = [str(x) for x in row["choices"]["text"]]
    return {
        "id": row_id(row, "id"),
        "question": str(stem).strip(),
        "choices": [t.strip() for t in texts],
        "answer": letter_index(row["answerKey"], labels),
        "group": "",
    }


TASK = mc_task(SPEC, normalize, question_block)
