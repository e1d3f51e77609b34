"""MMLU: 57 subjects, 5-shot from each subject's dev questions (3 for long subjects), one
generated letter, macro-averaged over subjects (docs/ARCHITECTURE.md#evaluation-protocol)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from hrm_text.eval import scoring
from hrm_text.eval.tasks.base import BenchmarkSpec, Example, PaperTask, ShotPicker, row_id
from hrm_text.eval.tasks.multiple_choice import (
    MC_NEW_TOKENS,
    MC_PREAMBLE,
    answer_reference,
    letter_index,
    mc_instruction,
    question_block,
    score_multiple_choice,
)

SPEC = BenchmarkSpec(
    "mmlu", "MMLU", "mc", 5, "test", "dev", "direct", 4096, MC_NEW_TOKENS,
    "cais/mmlu", ("all",), {"test": "test", "dev": "dev"},
    ("test/<subject>_test.csv + dev/<subject>_dev.csv  (hendrycks data.tar, no header: q,A,B,C,D,answer)",
     "all/test-00000-of-00001.parquet + all/dev-00000-of-00001.parquet  (HF cais/mmlu: question, subject, choices, answer)"),
    prefer="all", exclude=("auxiliary_train",),
)

# MMLU subjects whose questions embed long passages: 3 shots instead of 5 so the prompt fits the
# 4096-token context (docs/ARCHITECTURE.md#evaluation-protocol, "3 for long subjects").
# `count_tokens` can cut further.
LONG_MMLU_SUBJECTS = frozenset({
    "high_school_european_history",
    "high_school_us_history",
    "high_school_world_history",
    "professional_law",
})
_LONG_MMLU_SHOTS = 3


def normalize(row: Mapping[str, Any]) -> Example:
    if "_csv" in row:  # hendrycks CSV: question, A, B, C, D, answer letter; subject in file name
        cells = row["_csv"]
        if len(cells) != 6:  # an unquoted comma would silently shift the options: refuse it
            raise ValueError(f"MMLU CSV row {row.get('_row')} of {row.get('_path')} has {len(cells)} "
                             "cells; expected 6 (question, A, B, C, D, answer)")
        subject = re.sub(r"_(test|dev|val)$", "", str(row.get("_file", "")))
        choices = [c.strip() for c in cells[1:-1]]
        return {
            "id": f"{subject}/{row.get('_row', 0)}",
            "question": cells[0].strip(),
            "choices": choices,
            "answer": letter_index(cells[-1], scoring.LETTERS[: len(choices)]),
            "group": subject,
        }
    choices = [str(c).strip() for c in row["choices"]]
    answer = row["answer"]
    idx = int(answer) if isinstance(answer, int) or str(answer).isdigit() else letter_index(
        answer, scoring.LETTERS[: len(choices)])
    subject = str(row.get("subject") or "")
    return {
        "id": row_id(row, "id") if row.get("id") else f"{subject}/{row.get('_row', 0)}",
        "question": str(row["question"]).strip(),
        "choices": choices,
        "answer": idx,
        "group": subject,
    }


def subject_shots(bench: str, pool: Sequence[Example], k: int, seed: int) -> ShotPicker:
    """The first k dev questions of the item's own subject (the original MMLU protocol)."""
    pool_by_group: dict[str, list[Example]] = defaultdict(list)
    for p in pool:
        pool_by_group[p["group"]].append(p)

    def pick(ex: Mapping[str, Any]) -> list[Example]:
        n = min(k, _LONG_MMLU_SHOTS) if ex["group"] in LONG_MMLU_SUBJECTS else k
        return (pool_by_group.get(ex["group"]) or [])[:n]

    return pick


def build_instruction(ex: Mapping[str, Any], shots: Sequence[Mapping[str, Any]]) -> str:
    group = ex.get("group", "")
    preamble = (f"The following are multiple choice questions (with answers) about "
                f"{group.replace('_', ' ')}. {MC_PREAMBLE}") if group else MC_PREAMBLE
    return mc_instruction(preamble, question_block, ex, shots)


TASK = PaperTask(
    name=SPEC.name, score=score_multiple_choice, primary="acc", macro=True, spec=SPEC,
    normalize=normalize, build_instruction=build_instruction, reference=answer_reference,
    shot_picker=subject_shots,
)
