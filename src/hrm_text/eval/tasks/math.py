"""MATH: 5,000 competition problems over seven subjects, 0-shot with chain of thought; the last
`\\boxed{}` is compared by symbolic equivalence (docs/ARCHITECTURE.md#evaluation-protocol)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hrm_text.eval import scoring
from hrm_text.eval.tasks.base import COT_NEW_TOKENS, BenchmarkSpec, EvalItem, Example, PaperTask, row_id

SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)

SPEC = BenchmarkSpec(
    "math", "MATH", "math", 0, "test", None, "synth,cot", 3072, COT_NEW_TOKENS,
    "EleutherAI/hendrycks_math", SUBJECTS, {"test": "test"},
    ("test.jsonl  (5,000 problems, rows {problem, solution, answer?, subject|type, level})",
     "test/<subject>/<n>.json  (the original hendrycks MATH tarball, one problem per file)",
     "<subject>/test-00000-of-00001.parquet  (HF EleutherAI/hendrycks_math, 7 subjects)"),
)


def normalize(row: Mapping[str, Any]) -> Example:
    subject = row.get("subject") or row.get("type") or ""
    if not subject:  # hendrycks tarball: test/<subject>/<n>.json
        parts = Path(str(row.get("_path", ""))).parts
        subject = parts[-2] if len(parts) >= 2 else ""
    subject = str(subject).strip().lower().replace(" & ", "_and_").replace(" ", "_")
    return {
        "id": row_id(row, "unique_id", "id", "idx"),
        "problem": str(row["problem"]).strip(),
        "reference": scoring.math_reference_answer(dict(row)),
        "group": subject,
    }


def build_instruction(ex: Mapping[str, Any], shots: Sequence[Mapping[str, Any]]) -> str:
    return str(ex["problem"])


def score(item: EvalItem, generation: Any) -> dict[str, float]:
    return {"acc": scoring.score_math(generation, str(item.reference))}


TASK = PaperTask(
    name=SPEC.name, score=score, primary="acc", spec=SPEC, normalize=normalize,
    build_instruction=build_instruction, reference=lambda ex: ex["reference"],
)
