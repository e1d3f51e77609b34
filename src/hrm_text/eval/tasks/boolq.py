"""BoolQ: yes/no questions about a passage, 5-shot from the training split, one generated letter
(docs/ARCHITECTURE.md#evaluation-protocol)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hrm_text.eval.tasks.base import BenchmarkSpec, Example, row_id
from hrm_text.eval.tasks.multiple_choice import MC_NEW_TOKENS, mc_task, options

SPEC = BenchmarkSpec(
    "boolq", "BoolQ", "mc", 5, "validation", "train", "direct", 4096, MC_NEW_TOKENS,
    "google/boolq", (None,), {"validation": "validation", "train": "train"},
    ("dev.jsonl + train.jsonl  (google boolq release: question, passage, answer: bool)",
     "data/validation-*.parquet + data/train-*.parquet  (HF google/boolq)"),
)


def normalize(row: Mapping[str, Any]) -> Example:
    if "answer" in row:
        value = row["answer"]
        truth = value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes")
    elif "label" in row:  # super_glue/boolq
        truth = int(row["label"]) == 1
    else:
        raise ValueError("BoolQ row without 'answer' or 'label'")
    question = str(row["question"]).strip()
    question = question[:1].upper() + question[1:]
    if not question.endswith("?"):
        question += "?"
    return {
        "id": row_id(row, "idx", "id"),
        "question": question,
        "passage": str(row["passage"]).strip(),
        "title": str(row.get("title") or "").strip(),
        "choices": ["yes", "no"],
        "answer": 0 if truth else 1,
        "group": "",
    }


def _block(ex: Mapping[str, Any]) -> str:
    title = f"Title: {ex['title']}\n" if ex.get("title") else ""
    return f"{title}Passage: {ex['passage']}\nQuestion: {ex['question']}\n{options(ex['choices'])}\nAnswer:"


TASK = mc_task(SPEC, normalize, _block)
