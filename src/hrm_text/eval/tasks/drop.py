"""DROP: discrete reasoning over paragraphs, 3-shot from the training split, scored by exact match
and F1 with the official answer normalisation (docs/ARCHITECTURE.md#evaluation-protocol)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hrm_text.eval import scoring
from hrm_text.eval.tasks.base import BenchmarkSpec, EvalItem, Example, PaperTask, row_id

_DROP_NEW_TOKENS = 64

SPEC = BenchmarkSpec(
    "drop", "DROP", "drop", 3, "validation", "train", "direct", 3072, _DROP_NEW_TOKENS,
    "ucinlp/drop", (None,), {"validation": "validation", "train": "train"},
    ("drop_dataset_dev.json + drop_dataset_train.json  (original AllenAI release)",
     "data/validation-*.parquet + data/train-*.parquet  (HF ucinlp/drop: passage, question, answers_spans)"),
)

_PREAMBLE = ("Answer each question about its passage with a short answer only: a number, a date or "
             "text spans from the passage (several spans separated by commas).")


def flatten_release_json(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The original DROP release: {passage_id: {passage, qa_pairs: [{question, answer, ...}]}}."""
    rows = []
    for section_id, section in obj.items():
        for qa in section.get("qa_pairs", []):
            rows.append({"section_id": section_id, "passage": section.get("passage", ""), **qa})
    return rows


def _answer_strings(answer: Mapping[str, Any]) -> list[str]:
    """Spans of one DROP answer dict: the number, else the spans, else the date (day month year)."""
    number = str(answer.get("number") or "").strip()
    if number:
        return [number]
    spans = [str(s) for s in (answer.get("spans") or []) if str(s).strip()]
    if spans:
        return spans
    date = answer.get("date") or {}
    parts = [str(date.get(k) or "").strip() for k in ("day", "month", "year")]
    text = " ".join(p for p in parts if p)
    return [text] if text else []


def _as_row_list(value: Any) -> list[dict[str, Any]]:
    """HF stores a list of dicts either as such or as a dict of lists; accept both."""
    if isinstance(value, list):
        return [v for v in value if isinstance(v, Mapping)]
    if isinstance(value, Mapping) and value:
        keys = list(value)
        n = max((len(value[k]) for k in keys if isinstance(value[k], list)), default=0)
        return [{k: (value[k][i] if isinstance(value[k], list) and i < len(value[k]) else None) for k in keys}
                for i in range(n)]
    return []


def normalize(row: Mapping[str, Any]) -> Example:
    golds: list[list[str]] = []
    if "answers_spans" in row:  # HF ucinlp/drop
        spans = [str(s) for s in (row["answers_spans"] or {}).get("spans", []) if str(s).strip()]
        if spans:
            golds.append(spans)
    if isinstance(row.get("answer"), Mapping):  # original release / EleutherAI/drop
        golds.append(_answer_strings(row["answer"]))
    for ans in _as_row_list(row.get("validated_answers")):
        golds.append(_answer_strings(ans))
    if isinstance(row.get("answers"), list):  # pre-flattened lists of spans
        for a in row["answers"]:
            golds.append([a] if isinstance(a, str) else [str(s) for s in a])
    unique: list[list[str]] = []
    for g in golds:
        if g and g not in unique:
            unique.append(g)
    if not unique:
        raise ValueError(f"DROP row without any answer: {row_id(row, 'query_id')}")
    return {
        "id": row_id(row, "query_id", "id"),
        "passage": str(row["passage"]).strip(),
        "question": str(row["question"]).strip(),
        "golds": unique,
    }


def _block(ex: Mapping[str, Any]) -> str:
    return f"Passage: {ex['passage']}\nQuestion: {ex['question']}\nAnswer:"


def build_instruction(ex: Mapping[str, Any], shots: Sequence[Mapping[str, Any]]) -> str:
    """Preamble, the solved shots (each with its first gold answer), then the open question."""
    parts = [_PREAMBLE]
    parts += [f"{_block(s)} {', '.join(s['golds'][0])}" for s in shots]
    parts.append(_block(ex))
    return "\n\n".join(parts)


def score(item: EvalItem, generation: Any) -> dict[str, float]:
    em, f1 = scoring.score_drop(generation, item.reference)
    return {"em": em, "f1": f1}


TASK = PaperTask(
    name=SPEC.name, score=score, primary="f1", spec=SPEC, normalize=normalize,
    build_instruction=build_instruction, reference=lambda ex: ex["golds"],
)
