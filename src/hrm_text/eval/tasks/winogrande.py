"""Winogrande: fill the blank with one of two options, 5-shot from the training split (train_xl),
one generated letter (docs/ARCHITECTURE.md#evaluation-protocol)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hrm_text.eval.tasks.base import BenchmarkSpec, Example, row_id
from hrm_text.eval.tasks.multiple_choice import MC_NEW_TOKENS, mc_task, options

SPEC = BenchmarkSpec(
    "winogrande", "Winogrande", "mc", 5, "validation", "train", "direct", 4096, MC_NEW_TOKENS,
    "allenai/winogrande", ("winogrande_xl",), {"validation": "validation", "train": "train"},
    ("dev.jsonl + train_xl.jsonl  (winogrande_1.1: sentence, option1, option2, answer)",
     "winogrande_xl/validation-*.parquet + winogrande_xl/train-*.parquet  (HF allenai/winogrande)"),
    prefer="winogrande_xl",
)


def normalize(row: Mapping[str, Any]) -> Example:
    answer = str(row.get("answer") or "").strip()
    if answer not in ("1", "2"):
        raise ValueError(f"Winogrande row without answer 1/2 (test split?): {row_id(row, 'qID', 'id')}")
    return {
        "id": row_id(row, "qID", "id"),
        "question": str(row["sentence"]).strip(),
        "choices": [str(row["option1"]).strip(), str(row["option2"]).strip()],
        "answer": int(answer) - 1,
        "group": "",
    }


def _block(ex: Mapping[str, Any]) -> str:
    return f"Sentence: {ex['question']}\nWhich option correctly fills the blank (_)?\n{options(ex['choices'])}\nAnswer:"


TASK = mc_task(SPEC, normalize, _block)
