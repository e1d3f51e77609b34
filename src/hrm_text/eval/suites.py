"""Benchmark suites: load the paper's eight benchmarks and the built-in corpus, build prompts with
the paper's protocol (SPEC section 6), run a generation function over them and score the outputs.

The model sees one instruction and writes one response (SPEC section 3), so few-shot examples are
folded into the instruction text and the response is just the answer. Nothing here knows about the
model or the inference engine: `run_suite` takes any `generate(pairs) -> texts` callable, which is
what lets the scoring be tested with fake generators and the engine be plugged in by the CLI.

Data comes from local files in each dataset's published format under `EVAL_DATA_DIR/<benchmark>/`
(see `LAYOUT` and docs/EVALUATION.md), or from the Hugging Face Hub through `datasets` when a network
exists. Offline with no files, `MissingBenchmarkData` names every file it looked for.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hrm_text.eval import scoring

__all__ = [
    "PAPER_BENCHMARKS",
    "BENCHMARKS",
    "LAYOUT",
    "MissingBenchmarkData",
    "EvalItem",
    "ItemResult",
    "BenchmarkResult",
    "SuiteResult",
    "BenchmarkSpec",
    "canonical_benchmark",
    "load_benchmark_rows",
    "benchmark_items",
    "paper_items",
    "builtin_items",
    "score_item",
    "aggregate",
    "run_suite",
]

GenerateFn = Callable[[list[tuple[str, str]]], list[str]]
CountTokensFn = Callable[[str], int]


class MissingBenchmarkData(FileNotFoundError):
    """Benchmark files are absent and the Hub cannot be used; the message lists what to put where."""


# ---------------------------------------------------------------------------------------------
# Items and results


@dataclass
class EvalItem:
    """One prompt of a suite: what the model is asked and how its answer is scored.

    `reference` is benchmark-specific: an int option index (multiple choice), an int (GSM8K), an
    answer string (MATH, built-in), or a list of acceptable span lists (DROP). `n_choices` is set
    for multiple choice only (it fixes the 1/n credit). `group` is the MMLU subject, MATH subject or
    built-in module: MMLU and the built-in suite are macro-averaged over it.
    """

    benchmark: str
    id: str
    condition: str
    instruction: str
    reference: Any
    n_choices: int | None
    max_new_tokens: int
    group: str = ""
    n_shots: int = 0
    max_context: int = 3072


@dataclass
class ItemResult:
    """The generation for one item and its scores (fractions in [0, 1])."""

    benchmark: str
    id: str
    group: str
    generation: str
    scores: dict[str, float]


@dataclass
class BenchmarkResult:
    """Aggregated scores of one benchmark, in percent (the paper's scale).

    `metrics[primary]` is the headline number; `groups` holds per-subject/per-module scores.
    """

    name: str
    n: int
    primary: str
    metrics: dict[str, float]
    groups: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return self.metrics[self.primary]


@dataclass
class SuiteResult:
    """Everything a run produced: aggregated results, per-item records and run metadata."""

    benchmarks: dict[str, BenchmarkResult]
    items: list[ItemResult] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def scores(self) -> dict[str, float]:
        """Headline score (percent) per benchmark."""
        return {name: b.score for name, b in self.benchmarks.items()}

    def to_dict(self, include_items: bool = True) -> dict[str, Any]:
        return {
            "meta": dict(self.meta),
            "benchmarks": {name: asdict(b) for name, b in self.benchmarks.items()},
            "items": [asdict(i) for i in self.items] if include_items else [],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SuiteResult:
        benchmarks = {name: BenchmarkResult(**b) for name, b in data.get("benchmarks", {}).items()}
        items = [ItemResult(**i) for i in data.get("items", [])]
        return cls(benchmarks=benchmarks, items=items, meta=dict(data.get("meta", {})))


# ---------------------------------------------------------------------------------------------
# Benchmark specifications (SPEC section 6)


@dataclass(frozen=True)
class BenchmarkSpec:
    """The protocol of one benchmark and where its data lives."""

    name: str
    display: str
    scoring: str  # "gsm8k" | "math" | "drop" | "mc"
    shots: int
    eval_split: str
    shot_split: str | None
    condition: str
    max_context: int
    max_new_tokens: int
    hub_path: str
    hub_configs: tuple[str | None, ...]
    hub_splits: Mapping[str, str]  # our split name -> the Hub's split name
    layout: tuple[str, ...]  # human-readable accepted local files, relative to <data_dir>/<name>/
    prefer: str | None = None  # when several copies match, keep paths with this component
    exclude: tuple[str, ...] = ()  # path components that disqualify a file


_MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)

# Generation tasks: context 3072; multiple choice: 4096 (SPEC section 6).
_COT_NEW_TOKENS = 2048
_DROP_NEW_TOKENS = 64
_MC_NEW_TOKENS = 8  # one letter (+ end token); a little slack so "(B)" is not cut into a non-answer

BENCHMARKS: dict[str, BenchmarkSpec] = {
    "gsm8k": BenchmarkSpec(
        "gsm8k", "GSM8K", "gsm8k", 0, "test", None, "synth,cot", 3072, _COT_NEW_TOKENS,
        "openai/gsm8k", ("main",), {"test": "test"},
        ("test.jsonl  (openai/grade-school-math: rows {question, answer: '... #### N'})",
         "main/test-00000-of-00001.parquet  (HF openai/gsm8k)"),
    ),
    "math": BenchmarkSpec(
        "math", "MATH", "math", 0, "test", None, "synth,cot", 3072, _COT_NEW_TOKENS,
        "EleutherAI/hendrycks_math", _MATH_SUBJECTS, {"test": "test"},
        ("test.jsonl  (5,000 problems, rows {problem, solution, answer?, subject|type, level})",
         "test/<subject>/<n>.json  (the original hendrycks MATH tarball, one problem per file)",
         "<subject>/test-00000-of-00001.parquet  (HF EleutherAI/hendrycks_math, 7 subjects)"),
    ),
    "drop": BenchmarkSpec(
        "drop", "DROP", "drop", 3, "validation", "train", "direct", 3072, _DROP_NEW_TOKENS,
        "ucinlp/drop", (None,), {"validation": "validation", "train": "train"},
        ("drop_dataset_dev.json + drop_dataset_train.json  (original AllenAI release)",
         "data/validation-*.parquet + data/train-*.parquet  (HF ucinlp/drop: passage, question, answers_spans)"),
    ),
    "mmlu": BenchmarkSpec(
        "mmlu", "MMLU", "mc", 5, "test", "dev", "direct", 4096, _MC_NEW_TOKENS,
        "cais/mmlu", ("all",), {"test": "test", "dev": "dev"},
        ("test/<subject>_test.csv + dev/<subject>_dev.csv  (hendrycks data.tar, no header: q,A,B,C,D,answer)",
         "all/test-00000-of-00001.parquet + all/dev-00000-of-00001.parquet  (HF cais/mmlu: question, subject, choices, answer)"),
        prefer="all", exclude=("auxiliary_train",),
    ),
    "arc_challenge": BenchmarkSpec(
        "arc_challenge", "ARC-C", "mc", 25, "test", "train", "direct", 4096, _MC_NEW_TOKENS,
        "allenai/ai2_arc", ("ARC-Challenge",), {"test": "test", "train": "train"},
        ("ARC-Challenge-Test.jsonl + ARC-Challenge-Train.jsonl  (AI2 release: question.stem, question.choices, answerKey)",
         "ARC-Challenge/test-*.parquet + ARC-Challenge/train-*.parquet  (HF allenai/ai2_arc: choices.label/text, answerKey)"),
        exclude=("ARC-Easy", "arc-easy"),
    ),
    "hellaswag": BenchmarkSpec(
        "hellaswag", "HellaSwag", "mc", 10, "validation", "train", "direct", 4096, _MC_NEW_TOKENS,
        "Rowan/hellaswag", (None,), {"validation": "validation", "train": "train"},
        ("hellaswag_val.jsonl + hellaswag_train.jsonl  (rowanz/hellaswag: ctx, endings, label)",
         "data/validation-*.parquet + data/train-*.parquet  (HF Rowan/hellaswag)"),
    ),
    "winogrande": BenchmarkSpec(
        "winogrande", "Winogrande", "mc", 5, "validation", "train", "direct", 4096, _MC_NEW_TOKENS,
        "allenai/winogrande", ("winogrande_xl",), {"validation": "validation", "train": "train"},
        ("dev.jsonl + train_xl.jsonl  (winogrande_1.1: sentence, option1, option2, answer)",
         "winogrande_xl/validation-*.parquet + winogrande_xl/train-*.parquet  (HF allenai/winogrande)"),
        prefer="winogrande_xl",
    ),
    "boolq": BenchmarkSpec(
        "boolq", "BoolQ", "mc", 5, "validation", "train", "direct", 4096, _MC_NEW_TOKENS,
        "google/boolq", (None,), {"validation": "validation", "train": "train"},
        ("dev.jsonl + train.jsonl  (google boolq release: question, passage, answer: bool)",
         "data/validation-*.parquet + data/train-*.parquet  (HF google/boolq)"),
    ),
}

PAPER_BENCHMARKS: tuple[str, ...] = tuple(BENCHMARKS)

LAYOUT: dict[str, tuple[str, ...]] = {name: spec.layout for name, spec in BENCHMARKS.items()}

_ALIASES = {
    "arc": "arc_challenge", "arc-c": "arc_challenge", "arc_c": "arc_challenge", "arcc": "arc_challenge",
    "arc-challenge": "arc_challenge", "gsm": "gsm8k", "gsm-8k": "gsm8k", "hendrycks_math": "math",
    "winogrande_xl": "winogrande", "hella": "hellaswag", "hella_swag": "hellaswag",
}

# MMLU subjects whose questions embed long passages: 3 shots instead of 5 so the prompt fits the
# 4096-token context (SPEC section 6, "3 for long subjects"). `count_tokens` can cut further.
LONG_MMLU_SUBJECTS = frozenset({
    "high_school_european_history",
    "high_school_us_history",
    "high_school_world_history",
    "professional_law",
})
_LONG_MMLU_SHOTS = 3


def canonical_benchmark(name: str) -> str:
    """Our name for a benchmark given any common spelling ("ARC-C" -> "arc_challenge")."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BENCHMARKS and key != "builtin":
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(PAPER_BENCHMARKS)}, builtin")
    return key


# ---------------------------------------------------------------------------------------------
# Local files


_SPLIT_WORDS = {
    "test": ("test",),
    "validation": ("validation", "val", "dev"),
    "dev": ("dev",),
    "train": ("train", "train_xl"),
}
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def _split_matches(part: str, split: str) -> bool:
    """Whether a path component names `split` as a word: `test.jsonl`, `ARC-Challenge-Test.jsonl`,
    `abstract_algebra_dev.csv`, `validation-00000-of-00001.parquet`, a folder called `test`."""
    low = part.lower()
    for word in _SPLIT_WORDS[split]:
        if re.search(rf"(?:^|[-_.]){re.escape(word)}(?=[-_.]|$)", low):
            return True
    return False


def _find_split_files(bench_dir: Path, spec: BenchmarkSpec, split: str) -> list[Path]:
    if not bench_dir.is_dir():
        return []
    found = []
    for path in sorted(bench_dir.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in _DATA_SUFFIXES:
            continue
        parts = path.relative_to(bench_dir).parts
        if any(ex.lower() in p.lower() for p in parts for ex in spec.exclude):
            continue
        if split == "train" and any(re.search(r"train_(?:xs|s|m|l)\b", p.lower()) for p in parts):
            continue  # Winogrande's smaller training subsets are contained in train_xl
        if any(_split_matches(p, split) for p in parts):
            found.append(path)
    if spec.prefer:
        preferred = [p for p in found if spec.prefer in p.relative_to(bench_dir).parts]
        if preferred:
            found = preferred
    return found


def _flatten_drop_json(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The original DROP release: {passage_id: {passage, qa_pairs: [{question, answer, ...}]}}."""
    rows = []
    for section_id, section in obj.items():
        for qa in section.get("qa_pairs", []):
            rows.append({"section_id": section_id, "passage": section.get("passage", ""), **qa})
    return rows


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of one published data file, as dicts (CSV rows arrive as `{"_csv": [...]}`)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            return [{"_csv": row, "_file": path.stem} for row in csv.reader(f) if row]
    # utf-8-sig: a leading byte-order mark would otherwise make the first row invalid JSON
    text = path.read_text(encoding="utf-8-sig")
    if suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            pass  # some releases name JSON Lines files .json
        else:
            if isinstance(obj, list):
                return [r for r in obj if isinstance(r, dict)]
            if isinstance(obj, dict):
                if obj and all(isinstance(v, dict) and "qa_pairs" in v for v in obj.values()):
                    return _flatten_drop_json(obj)
                return [obj]
            return []
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from None
    return rows


def _load_local(bench_dir: Path, spec: BenchmarkSpec, split: str) -> list[dict[str, Any]] | None:
    files = _find_split_files(bench_dir, spec, split)
    if not files:
        return None
    rows: list[dict[str, Any]] = []
    for path in files:
        for i, row in enumerate(_read_rows(path)):
            row.setdefault("_path", str(path.relative_to(bench_dir)))
            row.setdefault("_row", i)
            rows.append(row)
    return rows


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes")
               for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def _load_hub(spec: BenchmarkSpec, split: str) -> list[dict[str, Any]]:
    import datasets

    rows: list[dict[str, Any]] = []
    for config in spec.hub_configs:
        ds = datasets.load_dataset(spec.hub_path, config, split=spec.hub_splits[split])
        for i, row in enumerate(ds):
            row = dict(row)
            row.setdefault("_path", f"hf:{spec.hub_path}/{config or ''}/{split}")
            row.setdefault("_row", i)
            if config and spec.name == "math":
                row.setdefault("subject", config)
            rows.append(row)
    return rows


def _expected_files_message(data_dir: Path | None, names: Sequence[str], reason: str) -> str:
    base = str(data_dir) if data_dir is not None else "$EVAL_DATA_DIR"
    lines = [
        f"benchmark data not found for: {', '.join(names)}.",
        f"Looked under {base}/<benchmark>/ (set --data-dir or EVAL_DATA_DIR). Expected, in the datasets'",
        "published formats (JSONL, JSON, Parquet or CSV; any one of the alternatives per benchmark):",
    ]
    for name in names:
        spec = BENCHMARKS[name]
        lines.append(f"  {base}/{name}/")
        for alt in spec.layout:
            lines.append(f"      {alt}")
    lines.append(reason)
    lines.append("See docs/EVALUATION.md for where to download each file.")
    return "\n".join(lines)


def load_benchmark_rows(
    name: str,
    split: str,
    data_dir: str | Path | None = None,
    source: str = "auto",
) -> list[dict[str, Any]]:
    """Raw rows of one split of one benchmark.

    `source`: "local" (files only), "hub" (`datasets.load_dataset` only) or "auto" (files when
    present, else the Hub unless HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set). Raises
    MissingBenchmarkData naming the expected files when nothing can be loaded.
    """
    spec = BENCHMARKS[canonical_benchmark(name)]
    if source not in ("auto", "local", "hub"):
        raise ValueError(f"source must be auto, local or hub, not {source!r}")
    root = Path(data_dir) if data_dir is not None else _default_data_dir()
    if source in ("auto", "local") and root is not None:
        rows = _load_local(root / spec.name, spec, split)
        if rows is not None:
            return rows
    if source == "local":
        raise MissingBenchmarkData(_expected_files_message(
            root, [spec.name], f"(no '{split}' split file found; source='local' does not try the Hub)"))
    if source == "auto" and _hub_offline():
        raise MissingBenchmarkData(_expected_files_message(
            root, [spec.name], f"(no '{split}' split file found, and the Hub is off: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE)"))
    try:
        return _load_hub(spec, split)
    except Exception as e:  # no network, dataset moved, datasets missing: all mean "give us files"
        raise MissingBenchmarkData(_expected_files_message(
            root, [spec.name],
            f"(no '{split}' split file found, and datasets.load_dataset({spec.hub_path!r}) failed: "
            f"{type(e).__name__}: {str(e)[:300]})")) from e


def _default_data_dir() -> Path | None:
    env = os.environ.get("EVAL_DATA_DIR")
    return Path(env) if env else None


# ---------------------------------------------------------------------------------------------
# Row normalisation: each published format -> one canonical dict per benchmark


def _row_id(row: Mapping[str, Any], *keys: str) -> str:
    for k in keys:
        v = row.get(k)
        if v not in (None, ""):
            return str(v)
    return f"{row.get('_path', '')}#{row.get('_row', 0)}"


def _norm_gsm8k(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": _row_id(row, "id", "idx"),
        "question": str(row["question"]).strip(),
        "answer_text": str(row["answer"]),
        "reference": scoring.gsm8k_reference_answer(row["answer"]),
    }


def _norm_math(row: Mapping[str, Any]) -> dict[str, Any]:
    subject = row.get("subject") or row.get("type") or ""
    if not subject:  # hendrycks tarball: test/<subject>/<n>.json
        parts = Path(str(row.get("_path", ""))).parts
        subject = parts[-2] if len(parts) >= 2 else ""
    subject = str(subject).strip().lower().replace(" & ", "_and_").replace(" ", "_")
    return {
        "id": _row_id(row, "unique_id", "id", "idx"),
        "problem": str(row["problem"]).strip(),
        "reference": scoring.math_reference_answer(dict(row)),
        "group": subject,
    }


def _drop_answer_strings(answer: Mapping[str, Any]) -> list[str]:
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


def _norm_drop(row: Mapping[str, Any]) -> dict[str, Any]:
    golds: list[list[str]] = []
    if "answers_spans" in row:  # HF ucinlp/drop
        spans = [str(s) for s in (row["answers_spans"] or {}).get("spans", []) if str(s).strip()]
        if spans:
            golds.append(spans)
    if isinstance(row.get("answer"), Mapping):  # original release / EleutherAI/drop
        golds.append(_drop_answer_strings(row["answer"]))
    for ans in _as_row_list(row.get("validated_answers")):
        golds.append(_drop_answer_strings(ans))
    if isinstance(row.get("answers"), list):  # pre-flattened lists of spans
        for a in row["answers"]:
            golds.append([a] if isinstance(a, str) else [str(s) for s in a])
    unique: list[list[str]] = []
    for g in golds:
        if g and g not in unique:
            unique.append(g)
    if not unique:
        raise ValueError(f"DROP row without any answer: {_row_id(row, 'query_id')}")
    return {
        "id": _row_id(row, "query_id", "id"),
        "passage": str(row["passage"]).strip(),
        "question": str(row["question"]).strip(),
        "golds": unique,
    }


def _letter_index(key: Any, labels: Sequence[str]) -> int:
    key = str(key).strip()
    if key in labels:
        return list(labels).index(key)
    if key.isdigit() and 1 <= int(key) <= len(labels) and not any(lbl.isdigit() for lbl in labels):
        return int(key) - 1
    if len(key) == 1 and key.upper() in scoring.LETTERS[: len(labels)]:
        return scoring.LETTERS.index(key.upper())
    raise ValueError(f"answer key {key!r} not among labels {list(labels)}")


def _norm_mmlu(row: Mapping[str, Any]) -> dict[str, Any]:
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
            "answer": _letter_index(cells[-1], scoring.LETTERS[: len(choices)]),
            "group": subject,
        }
    choices = [str(c).strip() for c in row["choices"]]
    answer = row["answer"]
    idx = int(answer) if isinstance(answer, int) or str(answer).isdigit() else _letter_index(
        answer, scoring.LETTERS[: len(choices)])
    subject = str(row.get("subject") or "")
    return {
        "id": _row_id(row, "id") if row.get("id") else f"{subject}/{row.get('_row', 0)}",
        "question": str(row["question"]).strip(),
        "choices": choices,
        "answer": idx,
        "group": subject,
    }


def _norm_arc(row: Mapping[str, Any]) -> dict[str, Any]:
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
        "id": _row_id(row, "id"),
        "question": str(stem).strip(),
        "choices": [t.strip() for t in texts],
        "answer": _letter_index(row["answerKey"], labels),
        "group": "",
    }


def _hellaswag_clean(text: str) -> str:
    """WikiHow contexts carry markup like ` [title]` and `[step]`; turn it into plain sentences."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return re.sub(r"\s+", " ", text).strip()


def _norm_hellaswag(row: Mapping[str, Any]) -> dict[str, Any]:
    if row.get("ctx_a") is not None and row.get("ctx_b") is not None:
        ctx_b = str(row["ctx_b"])
        ctx = str(row["ctx_a"]) + " " + (ctx_b[:1].upper() + ctx_b[1:])
    else:
        ctx = str(row["ctx"])
    activity = str(row.get("activity_label") or "").strip()
    label = row.get("label")
    if label in (None, ""):
        raise ValueError(f"HellaSwag row without a label (test split?): {_row_id(row, 'ind')}")
    return {
        "id": _row_id(row, "ind", "id"),
        "question": (f"{activity}: " if activity else "") + _hellaswag_clean(ctx),
        "choices": [_hellaswag_clean(str(e)) for e in row["endings"]],
        "answer": int(label),
        "group": "",
    }


def _norm_winogrande(row: Mapping[str, Any]) -> dict[str, Any]:
    answer = str(row.get("answer") or "").strip()
    if answer not in ("1", "2"):
        raise ValueError(f"Winogrande row without answer 1/2 (test split?): {_row_id(row, 'qID', 'id')}")
    return {
        "id": _row_id(row, "qID", "id"),
        "question": str(row["sentence"]).strip(),
        "choices": [str(row["option1"]).strip(), str(row["option2"]).strip()],
        "answer": int(answer) - 1,
        "group": "",
    }


def _norm_boolq(row: Mapping[str, Any]) -> dict[str, Any]:
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
        "id": _row_id(row, "idx", "id"),
        "question": question,
        "passage": str(row["passage"]).strip(),
        "title": str(row.get("title") or "").strip(),
        "choices": ["yes", "no"],
        "answer": 0 if truth else 1,
        "group": "",
    }


_NORMALIZERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "gsm8k": _norm_gsm8k,
    "math": _norm_math,
    "drop": _norm_drop,
    "mmlu": _norm_mmlu,
    "arc_challenge": _norm_arc,
    "hellaswag": _norm_hellaswag,
    "winogrande": _norm_winogrande,
    "boolq": _norm_boolq,
}


# ---------------------------------------------------------------------------------------------
# Prompts


_MC_PREAMBLE = "Answer each multiple-choice question with the letter of the correct option only."


def _options(choices: Sequence[str]) -> str:
    return "\n".join(f"{scoring.LETTERS[i]}. {c}" for i, c in enumerate(choices))


def _mc_block(bench: str, ex: Mapping[str, Any]) -> str:
    """One question (without its answer), ending in `Answer:` so the response is one letter."""
    opts = _options(ex["choices"])
    if bench == "hellaswag":
        return f"Context: {ex['question']}\nWhich ending is the most plausible?\n{opts}\nAnswer:"
    if bench == "winogrande":
        return f"Sentence: {ex['question']}\nWhich option correctly fills the blank (_)?\n{opts}\nAnswer:"
    if bench == "boolq":
        title = f"Title: {ex['title']}\n" if ex.get("title") else ""
        return f"{title}Passage: {ex['passage']}\nQuestion: {ex['question']}\n{opts}\nAnswer:"
    return f"Question: {ex['question']}\n{opts}\nAnswer:"


def _mc_preamble(bench: str, group: str) -> str:
    if bench == "mmlu" and group:
        return (f"The following are multiple choice questions (with answers) about "
                f"{group.replace('_', ' ')}. {_MC_PREAMBLE}")
    return _MC_PREAMBLE


def _drop_block(ex: Mapping[str, Any]) -> str:
    return f"Passage: {ex['passage']}\nQuestion: {ex['question']}\nAnswer:"


_DROP_PREAMBLE = ("Answer each question about its passage with a short answer only: a number, a date or "
                  "text spans from the passage (several spans separated by commas).")


def _build_instruction(bench: str, ex: Mapping[str, Any], shots: Sequence[Mapping[str, Any]]) -> str:
    """The one instruction the model sees: preamble, solved shots, then the open question."""
    if bench == "gsm8k":
        return str(ex["question"])
    if bench == "math":
        return str(ex["problem"])
    if bench == "drop":
        parts = [_DROP_PREAMBLE]
        parts += [f"{_drop_block(s)} {', '.join(s['golds'][0])}" for s in shots]
        parts.append(_drop_block(ex))
        return "\n\n".join(parts)
    parts = [_mc_preamble(bench, ex.get("group", ""))]
    parts += [f"{_mc_block(bench, s)} {scoring.LETTERS[s['answer']]}" for s in shots]
    parts.append(_mc_block(bench, ex))
    return "\n\n".join(parts)


def _reference(bench: str, ex: Mapping[str, Any]) -> Any:
    if bench == "drop":
        return ex["golds"]
    if bench in ("gsm8k", "math"):
        return ex["reference"]
    return ex["answer"]


def _apply_limit(items: Sequence[Any], limit: int | None, key: Callable[[Any], str]) -> list[Any]:
    """The first `limit` items, taken round-robin over groups (MMLU subjects, built-in modules) so
    that a quick `--limit` run still samples every group instead of only the first one."""
    if limit is None or limit < 0 or limit >= len(items):
        return list(items)
    by_group: dict[str, list[Any]] = defaultdict(list)
    for it in items:
        by_group[key(it)].append(it)
    if len(by_group) == 1:
        return list(items[:limit])
    out: list[Any] = []
    queues = [list(reversed(v)) for v in by_group.values()]
    while len(out) < limit:
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop())
    chosen = {id(x) for x in out}
    return [it for it in items if id(it) in chosen]


def benchmark_items(
    name: str,
    eval_rows: Sequence[Mapping[str, Any]],
    shot_rows: Sequence[Mapping[str, Any]] | None = None,
    limit: int | None = None,
    seed: int = 1234,
    count_tokens: CountTokensFn | None = None,
) -> list[EvalItem]:
    """Build the EvalItems of one benchmark from raw rows (any supported published format).

    Shots: MMLU uses the first k dev questions of the same subject (the original MMLU protocol);
    the others draw k training examples per item with a generator seeded by (seed, benchmark,
    item id), so prompts are reproducible and independent of `limit`. With `count_tokens`, shots
    are dropped from the end until prompt + `max_new_tokens` fits the benchmark's context.
    """
    bench = canonical_benchmark(name)
    spec = BENCHMARKS[bench]
    norm = _NORMALIZERS[bench]
    examples = [norm(r) for r in eval_rows]
    examples = _apply_limit(examples, limit, key=lambda e: e.get("group", ""))
    pool = [norm(r) for r in shot_rows] if (spec.shots and shot_rows) else []
    if spec.shots and not pool:
        raise ValueError(f"{bench} is {spec.shots}-shot but no '{spec.shot_split}' rows were given")
    pool_by_group: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if bench == "mmlu":
        for p in pool:
            pool_by_group[p["group"]].append(p)

    items: list[EvalItem] = []
    for ex in examples:
        k = spec.shots
        if bench == "mmlu":
            if ex["group"] in LONG_MMLU_SUBJECTS:
                k = min(k, _LONG_MMLU_SHOTS)
            candidates = pool_by_group.get(ex["group"]) or []
            shots = candidates[:k]
        elif k:
            # Draw one spare so the item itself (possible when shots come from the same file)
            # can be dropped without a scan of the whole pool per item.
            rng = random.Random(f"{seed}:{bench}:{ex['id']}")
            drawn = rng.sample(range(len(pool)), min(k + 1, len(pool)))
            shots = [pool[i] for i in drawn if pool[i]["id"] != ex["id"]][:k]
        else:
            shots = []
        instruction = _build_instruction(bench, ex, shots)
        if count_tokens is not None:
            while shots and count_tokens(instruction) + spec.max_new_tokens > spec.max_context:
                shots = shots[:-1]
                instruction = _build_instruction(bench, ex, shots)
        items.append(EvalItem(
            benchmark=bench,
            id=str(ex["id"]),
            condition=spec.condition,
            instruction=instruction,
            reference=_reference(bench, ex),
            n_choices=len(ex["choices"]) if spec.scoring == "mc" else None,
            max_new_tokens=spec.max_new_tokens,
            group=str(ex.get("group", "")),
            n_shots=len(shots),
            max_context=spec.max_context,
        ))
    return items


def paper_items(
    data_dir: str | Path | None = None,
    benchmarks: Iterable[str] | None = None,
    limit: int | None = None,
    seed: int = 1234,
    source: str = "auto",
    count_tokens: CountTokensFn | None = None,
) -> list[EvalItem]:
    """Items of the paper's suite (all eight benchmarks unless `benchmarks` narrows it).

    Every requested benchmark is checked before any is built, so a missing-data error lists all
    the absent files at once instead of one per attempt.
    """
    names = [canonical_benchmark(b) for b in (benchmarks or PAPER_BENCHMARKS)]
    names = [n for n in names if n != "builtin"]
    root = Path(data_dir) if data_dir is not None else _default_data_dir()
    loaded: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = {}
    missing: list[str] = []
    errors: list[str] = []
    for name in names:
        spec = BENCHMARKS[name]
        try:
            rows = load_benchmark_rows(name, spec.eval_split, root, source)
            shot_rows = load_benchmark_rows(name, spec.shot_split, root, source) if spec.shot_split else None
        except MissingBenchmarkData as e:
            missing.append(name)
            errors.append(str(e).splitlines()[-2])
            continue
        loaded[name] = (rows, shot_rows)
    if missing:
        reason = "\n".join(sorted(set(errors)))
        raise MissingBenchmarkData(_expected_files_message(root, missing, reason))
    items: list[EvalItem] = []
    for name in names:
        rows, shot_rows = loaded[name]
        items += benchmark_items(name, rows, shot_rows, limit=limit, seed=seed, count_tokens=count_tokens)
    return items


# ---------------------------------------------------------------------------------------------
# Built-in corpus suite


def _builtin_files(corpus: str | Path | Mapping[str, str | Path]) -> dict[str, Path]:
    if isinstance(corpus, Mapping):
        return {str(k): Path(v) for k, v in corpus.items()}
    path = Path(corpus)
    if path.is_file():
        return {path.stem: path}
    if not path.is_dir():
        raise MissingBenchmarkData(
            f"built-in held-out corpus not found at {path}: expected a folder of held-out JSONL or "
            "Parquet files with rows {condition, instruction, response} (write it with "
            "`hrm-text data builtin`).")
    files: dict[str, Path] = {}
    try:  # the corpus generator knows which of its files are held out, when it is installed
        from hrm_text.data.builtin import builtin_heldout_files  # type: ignore[attr-defined]

        files = {str(k): Path(v) for k, v in builtin_heldout_files(path).items()}
    except Exception:
        files = {}
    if not files:
        if (path / "heldout").is_dir():  # a whole corpus folder: only its held-out part
            path = path / "heldout"
        for p in sorted(path.rglob("*")):
            if p.is_file() and p.suffix.lower() in (".jsonl", ".parquet"):
                files[str(p.relative_to(path).with_suffix(""))] = p
    if not files:
        raise MissingBenchmarkData(
            f"no held-out JSONL/Parquet files in {path}: expected rows {{condition, instruction, "
            "response}} (write them with `hrm-text data builtin`).")
    return files


def builtin_items(
    corpus: str | Path | Mapping[str, str | Path],
    limit: int | None = None,
) -> list[EvalItem]:
    """Items of the built-in suite: every row of every held-out file, scored by exact match.

    `corpus` is a corpus folder (its `heldout/` part is used), a folder of held-out files, one
    file, or a mapping name -> path (e.g. `hrm_text.data.builtin.builtin_heldout_files(dir)`).
    Each file is a group, split further by the rows' `module` field when present (DeepMind
    mathematics files hold every module), so results are reported per module. `limit` caps rows
    per file, taken round-robin over its modules. `max_new_tokens` is the reference's length in
    bytes plus a margin: a token is at least one byte, so a correct answer always fits, and a
    model that rambles is cut early instead of wasting the run.
    """
    items: list[EvalItem] = []
    for name, path in _builtin_files(corpus).items():
        if not path.is_file():
            raise MissingBenchmarkData(f"built-in held-out file {name!r} not found: {path}")
        rows = _read_rows(path)
        for i, row in enumerate(rows):
            row["_index"] = i
        rows = _apply_limit(rows, limit, key=lambda r: str(r.get("module") or ""))
        for row in rows:
            response = str(row.get("response", ""))
            module = str(row.get("module") or "")
            items.append(EvalItem(
                benchmark="builtin",
                id=f"{name}:{row['_index']}",
                condition=str(row.get("condition") or "direct"),
                instruction=str(row.get("instruction", "")),
                reference=response.strip(),
                n_choices=None,
                max_new_tokens=len(response.strip().encode("utf-8")) + 8,
                group=f"{name}/{module}" if module else name,
                n_shots=0,
                max_context=4096,
            ))
    return items


# ---------------------------------------------------------------------------------------------
# Scoring and aggregation


_PRIMARY = {"gsm8k": "acc", "math": "acc", "drop": "f1", "mc": "acc", "builtin": "exact"}
_MACRO = frozenset({"mmlu", "builtin"})  # averaged over groups (subjects / modules)


def _scoring_kind(benchmark: str) -> str:
    if benchmark == "builtin":
        return "builtin"
    return BENCHMARKS[benchmark].scoring


def score_item(item: EvalItem, generation: Any) -> dict[str, float]:
    """Scores of one generation, as fractions in [0, 1]; never raises on the generation."""
    kind = _scoring_kind(item.benchmark)
    if kind == "mc":
        n = int(item.n_choices or 0)
        invalid = scoring.extract_letter(generation, n) is None
        return {"acc": scoring.score_multiple_choice(generation, int(item.reference), n),
                "invalid": 1.0 if invalid else 0.0}
    if kind == "gsm8k":
        return {"acc": scoring.score_gsm8k(generation, int(item.reference))}
    if kind == "math":
        return {"acc": scoring.score_math(generation, str(item.reference))}
    if kind == "drop":
        em, f1 = scoring.score_drop(generation, item.reference)
        return {"em": em, "f1": f1}
    return {"exact": scoring.score_exact(generation, str(item.reference))}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def aggregate(results: Sequence[ItemResult]) -> dict[str, BenchmarkResult]:
    """Per-benchmark percentages: micro average over items, except MMLU (the paper's macro
    average over subjects) and the built-in suite (macro over modules, so a large module does not
    hide a failing small one). Per-group scores are always kept."""
    by_bench: dict[str, list[ItemResult]] = defaultdict(list)
    for r in results:
        by_bench[r.benchmark].append(r)
    out: dict[str, BenchmarkResult] = {}
    for bench, rs in by_bench.items():
        metric_names = list(rs[0].scores)
        groups: dict[str, dict[str, float]] = {}
        by_group: dict[str, list[ItemResult]] = defaultdict(list)
        for r in rs:
            by_group[r.group].append(r)
        for g, grs in sorted(by_group.items()):
            if g:
                groups[g] = {"n": float(len(grs))}
                groups[g].update({m: 100.0 * _mean([r.scores.get(m, 0.0) for r in grs]) for m in metric_names})
        if bench in _MACRO and groups:
            metrics = {m: _mean([groups[g][m] for g in groups]) for m in metric_names}
        else:
            metrics = {m: 100.0 * _mean([r.scores.get(m, 0.0) for r in rs]) for m in metric_names}
        out[bench] = BenchmarkResult(
            name=bench, n=len(rs), primary=_PRIMARY[_scoring_kind(bench)], metrics=metrics, groups=groups)
    return out


def _select(items: Sequence[EvalItem], only: str | Iterable[str] | None) -> list[EvalItem]:
    if only is None:
        return list(items)
    wanted_raw = [w for w in (only.split(",") if isinstance(only, str) else only) if str(w).strip()]
    if not wanted_raw:
        return list(items)
    available = {it.benchmark for it in items} | {it.group for it in items if it.group}
    wanted: set[str] = set()
    for w in wanted_raw:
        w = str(w).strip()
        try:
            canon = canonical_benchmark(w)
        except ValueError:
            canon = w
        if canon in available:
            wanted.add(canon)
        elif w in available:
            wanted.add(w)
        else:
            raise ValueError(f"--only {w!r} matches no benchmark or group; available: "
                             f"{', '.join(sorted(available))}")
    return [it for it in items if it.benchmark in wanted or it.group in wanted]


def run_suite(
    items: Sequence[EvalItem],
    generate: GenerateFn,
    batch_size: int = 32,
    limit: int | None = None,
    only: str | Iterable[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> SuiteResult:
    """Generate a response for every selected item and score it.

    `generate` receives a batch of (condition, instruction) pairs and must return one response
    text per pair (greedy decoding in the real engine). `limit` caps items per benchmark
    (round-robin over groups), `only` keeps the named benchmarks or groups (a list or a
    comma-separated string). A generator returning the wrong number of texts is a bug and raises;
    anything it returns as a text, however malformed, is just scored.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    selected = _select(items, only)
    if limit is not None:
        by_bench: dict[str, list[EvalItem]] = defaultdict(list)
        for it in selected:
            by_bench[it.benchmark].append(it)
        selected = [x for b in by_bench.values() for x in _apply_limit(b, limit, key=lambda i: i.group)]
    results: list[ItemResult] = []
    for start in range(0, len(selected), batch_size):
        batch = selected[start : start + batch_size]
        outputs = list(generate([(it.condition, it.instruction) for it in batch]))
        if len(outputs) != len(batch):
            raise ValueError(f"generate returned {len(outputs)} texts for {len(batch)} prompts")
        for it, out in zip(batch, outputs):
            text = out if isinstance(out, str) else ""
            results.append(ItemResult(benchmark=it.benchmark, id=it.id, group=it.group,
                                      generation=text, scores=score_item(it, text)))
        if progress is not None:
            progress(len(results), len(selected))
    run_meta = {"n_items": len(results), "batch_size": batch_size, "limit": limit,
                "only": only if isinstance(only, (str, type(None))) else list(only)}
    run_meta["n_shots"] = {b: sorted({it.n_shots for it in selected if it.benchmark == b})
                           for b in {it.benchmark for it in selected}}
    run_meta.update(meta or {})
    return SuiteResult(benchmarks=aggregate(results), items=results, meta=run_meta)
