"""HellaSwag: pick the most plausible ending, 10-shot from the training split, one generated letter
(docs/ARCHITECTURE.md#evaluation-protocol)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from hrm_text.eval.tasks.base import BenchmarkSpec, Example, row_id
from hrm_text.eval.tasks.multiple_choice import MC_NEW_TOKENS, mc_task, options

SPEC = BenchmarkSpec(
    "hellaswag", "HellaSwag", "mc", 10, "validation", "train", "direct", 4096, MC_NEW_TOKENS,
    "Rowan/hellaswag", (None,), {"validation": "validation", "train": "train"},
    ("hellaswag_val.jsonl + hellaswag_train.jsonl  (rowanz/hellaswag: ctx, endings, label)",
     "data/validation-*.parquet + data/train-*.parquet  (HF Rowan/hellaswag)"),
)


def _clean(text: str) -> str:
    """WikiHow contexts carry markup like ` [title]` and `[step]`; turn it into plain sentences."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return re.sub(r"\s+", " ", text).strip()


def normalize(row: Mapping[str, Any]) -> Example:
    if row.get("ctx_a") is not None and row.get("ctx_b") is not None:
        ctx_b = str(row["ctx_b"])
        ctx = str(row["ctx_a"]) + " " + (ctx_b[:1].upper() + ctx_b[1:])
    else:
        ctx = str(row["ctx"])
    activity = str(row.get("activity_label") or "").strip()
    label = row.get("label")
    if label in (None, ""):
        raise ValueError(f"HellaSwag row without a label (test split?): {row_id(row, 'ind')}")
    return {
        "id": row_id(row, "ind", "id"),
        "question": (f"{activity}: " if activity else "") + _clean(ctx),
        "choices": [_clean(str(e)) for e in row["endings"]],
        "answer": int(label),
        "group": "",
    }


def _block(ex: Mapping[str, Any]) -> str:
    return f"Context: {ex['question']}\nWhich ending is the most plausible?\n{options(ex['choices'])}\nAnswer:"


TASK = mc_task(SPEC, normalize, _block)
