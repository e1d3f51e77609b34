"""GSM8K: grade-school word problems, 0-shot with chain of thought; the last `\\boxed{}` (else the
whole output) is read as an integer (docs/ARCHITECTURE.md#evaluation-protocol)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hrm_text.eval import scoring
from hrm_text.eval.tasks.base import COT_NEW_TOKENS, BenchmarkSpec, EvalItem, Example, PaperTask, row_id

SPEC = BenchmarkSpec(
    "gsm8k", "GSM8K", "gsm8k", 0, "test", None, "synth,cot", 3072, COT_NEW_TOKENS,
    "openai/gsm8k", ("main",), {"test": "test"},
    ("test.jsonl  (openai/grade-school-math: rows {question, answer: '... #### N'})",
     "main/test-00000-of-00001.parquet  (HF openai/gsm8k)"),
)


def normalize(row: Mapping[str, Any]) -> Example:
    return {
        "id": row_id(row, "id", "idx"),
        "question": str(row["question"]).strip(),
        "answer_text": str(row["answer"]),
        "reference": scoring.gsm8k_reference_answer(row["answer"]),
    }


def build_instruction(ex: Mapping[str, Any], shots: Sequence[Mapping[str, Any]]) -> str:
    return str(ex["question"])


def score(item: EvalItem, generation: Any) -> dict[str, float]:
    return {"acc": scoring.score_gsm8k(generation, int(item.reference))}


TASK = PaperTask(
    name=SPEC.name, score=score, primary="acc", spec=SPEC, normalize=normalize,
    build_instruction=build_instruction, reference=lambda ex: ex["reference"],
)
