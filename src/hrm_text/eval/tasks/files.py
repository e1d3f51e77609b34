"""Benchmark rows from local files in each dataset's published format, or from the Hugging Face
Hub through `datasets` when a network exists.

Local files live under `<data_dir>/<benchmark>/` (see each spec's `layout` and
docs/EVALUATION.md). Offline with no files, `MissingBenchmarkData` names every file looked for.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hrm_text.eval.tasks.base import BenchmarkSpec, MissingBenchmarkData
from hrm_text.eval.tasks.drop import flatten_release_json

__all__ = ["read_rows", "load_split", "default_data_dir", "expected_files_message"]

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


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of one published data file, as dicts (CSV rows arrive as `{"_csv": [...]}`)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # lazy: only Parquet files need pyarrow loaded

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
                    return flatten_release_json(obj)
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
        for i, row in enumerate(read_rows(path)):
            row.setdefault("_path", str(path.relative_to(bench_dir)))
            row.setdefault("_row", i)
            rows.append(row)
    return rows


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes")
               for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def _load_hub(spec: BenchmarkSpec, split: str) -> list[dict[str, Any]]:
    import datasets  # lazy: slow to import, and only needed when local files are missing

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


def expected_files_message(data_dir: Path | None, specs: Sequence[BenchmarkSpec], reason: str) -> str:
    """What to put where, for every benchmark in `specs`, ending with `reason` on its own line."""
    base = str(data_dir) if data_dir is not None else "$EVAL_DATA_DIR"
    lines = [
        f"benchmark data not found for: {', '.join(spec.name for spec in specs)}.",
        f"Looked under {base}/<benchmark>/ (set --data-dir or EVAL_DATA_DIR). Expected, in the datasets'",
        "published formats (JSONL, JSON, Parquet or CSV; any one of the alternatives per benchmark):",
    ]
    for spec in specs:
        lines.append(f"  {base}/{spec.name}/")
        for alt in spec.layout:
            lines.append(f"      {alt}")
    lines.append(reason)
    lines.append("See docs/EVALUATION.md for where to download each file.")
    return "\n".join(lines)


def load_split(spec: BenchmarkSpec, split: str, root: Path | None, source: str) -> list[dict[str, Any]]:
    """Raw rows of one split: local files under `root/<name>/`, else the Hub (see
    `runner.load_benchmark_rows` for `source`)."""
    if source not in ("auto", "local", "hub"):
        raise ValueError(f"source must be auto, local or hub, not {source!r}")
    if source in ("auto", "local") and root is not None:
        rows = _load_local(root / spec.name, spec, split)
        if rows is not None:
            return rows
    if source == "local":
        raise MissingBenchmarkData(expected_files_message(
            root, [spec], f"(no '{split}' split file found; source='local' does not try the Hub)"))
    if source == "auto" and _hub_offline():
        raise MissingBenchmarkData(expected_files_message(
            root, [spec], f"(no '{split}' split file found, and the Hub is off: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE)"))
    try:
        return _load_hub(spec, split)
    except Exception as e:  # no network, dataset moved, datasets missing: all mean "give us files"
        raise MissingBenchmarkData(expected_files_message(
            root, [spec],
            f"(no '{split}' split file found, and datasets.load_dataset({spec.hub_path!r}) failed: "
            f"{type(e).__name__}: {str(e)[:300]})")) from e


def default_data_dir() -> Path | None:
    """`EVAL_DATA_DIR`, when set."""
    env = os.environ.get("EVAL_DATA_DIR")
    return Path(env) if env else None
