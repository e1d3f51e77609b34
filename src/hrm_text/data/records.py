"""Reading and validating instruction-response records (docs/ARCHITECTURE.md#records).

Input rows look like `{"condition": "cot", "instruction": "...", "response": "..."}` in JSONL,
Parquet or any `datasets` dataset. Real corpora are dirty, so every row is validated and bad rows
are *counted per file with the first few line numbers* instead of aborting a multi-hour job on the
first problem (or silently training on garbage). `strict=True` turns the first bad row into an
error naming file and line.

Checks, each with its own reason key:
  invalid_utf8        the line (or a binary cell) is not valid UTF-8
  malformed_json      the JSONL line does not parse, or is not a JSON object
  missing_field       instruction or response absent / null
  non_string_field    instruction, response or condition is not a string
  empty_response      the response is empty or whitespace (after optional <think> stripping)
  unknown_condition   a condition tag that is not one of direct, cot, noisy, synth

A missing or null `condition` means the default condition (`direct` unless changed): most public
datasets have no such column, and "direct" is the paper's default.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping


RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")
REASONS = (
    "invalid_utf8",
    "malformed_json",
    "missing_field",
    "non_string_field",
    "empty_response",
    "unknown_condition",
)
MAX_REPORTED_LINES = 5

_THINK_RE = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


class RecordError(ValueError):
    """A bad input row under `strict=True`; the message names the file and line."""


# Condition tags, in the order the released tokenizer's special tokens give them
# (docs/ARCHITECTURE.md#special-tokens); each is one special token of the tokenizer.
CONDITIONS: tuple[str, ...] = ("direct", "cot", "noisy", "synth")


def parse_condition(s: str | None) -> list[str]:
    """Split a condition string such as "synth,cot" into validated tags, in order.

    Empty or None means "direct" (the paper's default). Raises ValueError naming the unknown tag, so
    a typo in a data file or on the command line is reported instead of silently training on it.
    """
    if s is None or not str(s).strip():
        return ["direct"]
    tags = [t.strip() for t in str(s).split(",")]
    for t in tags:
        if t not in CONDITIONS:
            raise ValueError(f"unknown condition tag {t!r} in {s!r}; allowed tags: {', '.join(CONDITIONS)}")
    return tags


@dataclass(frozen=True)
class Record:
    condition: str
    instruction: str
    response: str
    line: int  # 1-based line (JSONL) or row (Parquet / datasets) number


@dataclass
class FileReport:
    """Per-file validation counts: how many rows were kept and why the others were skipped."""

    path: str
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_lines: dict[str, list[int]] = field(default_factory=dict)

    def skip(self, reason: str, line: int) -> None:
        self.skipped[reason] += 1
        lines = self.first_lines.setdefault(reason, [])
        if len(lines) < MAX_REPORTED_LINES:
            lines.append(line)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One human line per reason, e.g. `data.jsonl: 3 malformed_json (lines 4, 9, 12)`."""
        out = []
        for reason in REASONS:
            n = self.skipped.get(reason, 0)
            if n:
                lines = ", ".join(map(str, self.first_lines.get(reason, [])))
                more = ", ..." if n > len(self.first_lines.get(reason, [])) else ""
                out.append(f"{self.path}: {n} {reason} (lines {lines}{more})")
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kept": self.kept, "skipped": dict(self.skipped), "first_lines": self.first_lines}


@dataclass
class ColumnMap:
    """Which source column feeds which field (e.g. `instruction=question,response=answer`)."""

    condition: str | None = "condition"
    instruction: str = "instruction"
    response: str = "response"

    @classmethod
    def parse(cls, spec: str | None) -> "ColumnMap":
        """Parse `field=column,...`; `condition=` (empty) means the source has no condition column."""
        cm = cls()
        if not spec:
            return cm
        for part in spec.split(","):
            if "=" not in part:
                raise ValueError(f"column mapping {part!r} must look like field=column (e.g. instruction=question)")
            k, v = (s.strip() for s in part.split("=", 1))
            if k not in ("condition", "instruction", "response"):
                raise ValueError(f"column mapping names unknown field {k!r}; fields: condition, instruction, response")
            setattr(cm, k, v or None)
        return cm


def strip_think(text: str) -> str:
    """Remove `<think>...</think>` spans (reasoning traces) from a response (docs/ARCHITECTURE.md#records)."""
    if "<think>" not in text:
        return text
    text = _THINK_RE.sub("", text)
    # an unterminated <think> means the whole trace was cut: drop from the tag on
    i = text.find("<think>")
    return text[:i] if i >= 0 else text


def validate_row(
    row: Mapping[str, Any],
    columns: ColumnMap,
    default_condition: str = "direct",
    think: bool = False,
) -> tuple[str | None, tuple[str, str, str] | None]:
    """Check one decoded row. Returns (reason, (condition, instruction, response)); exactly one
    of the two is None."""
    vals = {}
    for name in ("instruction", "response"):
        col = getattr(columns, name)
        v = row.get(col)
        if v is None:
            return "missing_field", None
        if isinstance(v, (bytes, bytearray)):
            try:
                v = bytes(v).decode("utf-8")
            except UnicodeDecodeError:
                return "invalid_utf8", None
        if not isinstance(v, str):
            return "non_string_field", None
        vals[name] = v
    cond = row.get(columns.condition) if columns.condition else None
    if cond is None or cond == "":
        cond = default_condition
    if isinstance(cond, (bytes, bytearray)):
        try:
            cond = bytes(cond).decode("utf-8")
        except UnicodeDecodeError:
            return "invalid_utf8", None
    if not isinstance(cond, str):
        return "non_string_field", None
    try:
        tags = parse_condition(cond)
    except ValueError:
        return "unknown_condition", None
    resp = strip_think(vals["response"]) if think else vals["response"]
    if not resp.strip():
        return "empty_response", None
    # lone surrogates (from JSON "\ud800") are not encodable UTF-8 either
    for s in (vals["instruction"], resp):
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            return "invalid_utf8", None
    return None, (",".join(tags), vals["instruction"], resp)


def _iter_jsonl_rows(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """Yield (line number, decoded object or None, reason or None); blank lines are ignored."""
    with open(path, "rb") as fh:
        for i, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                # utf-8-sig: a byte-order mark (Windows editors, PowerShell) at the start of the
                # file, or of a file concatenated into this one, is not part of the JSON
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                yield i, None, "invalid_utf8"
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                yield i, None, "malformed_json"
                continue
            if not isinstance(obj, dict):
                yield i, None, "malformed_json"
                continue
            yield i, obj, None


def _iter_parquet_rows(path: Path, batch_size: int = 8192) -> Iterator[tuple[int, Any, str | None]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path, pre_buffer=False)  # pre-buffered chunks stay in memory until the end of the file
    n = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        for row in batch.to_pylist():
            n += 1
            yield n, row, None


def _iter_dataset_rows(ds: Iterable[Mapping[str, Any]]) -> Iterator[tuple[int, Any, str | None]]:
    for i, row in enumerate(ds, 1):
        yield i, row, None


def iter_source_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into a sorted list of record files (.jsonl/.json/.parquet/.txt)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in RECORD_SUFFIXES + (".txt",)))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist")
    return out


def _rows_for(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    if path.suffix == ".parquet":
        return _iter_parquet_rows(path)
    if path.suffix in (".jsonl", ".json"):
        return _iter_jsonl_rows(path)
    raise ValueError(f"{path}: unsupported file type {path.suffix!r} (use .jsonl or .parquet)")


def read_records(
    source: str | os.PathLike | Iterable[Mapping[str, Any]],
    report: FileReport | None = None,
    columns: ColumnMap | None = None,
    default_condition: str = "direct",
    think: bool = False,
    strict: bool = False,
) -> Iterator[Record]:
    """Yield validated records from a JSONL/Parquet file or an iterable of dict rows.

    Bad rows go to `report` (counted, first line numbers kept). With `strict`, the first bad row
    raises RecordError naming the file and line.
    """
    columns = columns or ColumnMap()
    parse_condition(default_condition)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        rows = _rows_for(path)
        name = str(path)
    else:
        rows = _iter_dataset_rows(source)
        name = getattr(source, "info", None) and getattr(source.info, "dataset_name", None) or "<dataset>"
    if report is None:
        report = FileReport(name)
    for line, obj, reason in rows:
        fields = None
        if reason is None:
            reason, fields = validate_row(obj, columns, default_condition, think)
        if reason is not None:
            if strict:
                raise RecordError(f"{name}:{line}: {reason.replace('_', ' ')}")
            report.skip(reason, line)
            continue
        report.kept += 1
        yield Record(fields[0], fields[1], fields[2], line)


def load_dataset_rows(name_or_path: str, split: str = "train", data_files: str | None = None) -> Any:
    """Open a `datasets` dataset: a `save_to_disk` folder, data files, or a hub name.

    Hub names need a network; the error then says so instead of a deep traceback.
    """
    import datasets

    p = Path(name_or_path)
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "state.json").exists() or (p / "dataset_dict.json").exists()):
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{p} has splits {list(ds)}, not {split!r}")
            ds = ds[split]
        return ds
    if data_files is not None:
        return datasets.load_dataset(name_or_path, data_files=data_files, split=split)
    try:
        return datasets.load_dataset(name_or_path, split=split)
    except Exception as e:  # network or name problems: one readable line
        raise ValueError(f"could not load dataset {name_or_path!r} (split {split!r}): {type(e).__name__}: {e}") from None


def export_dataset_to_jsonl(
    ds: Iterable[Mapping[str, Any]],
    out_path: str | os.PathLike,
    columns: ColumnMap | None = None,
    default_condition: str = "direct",
    think: bool = False,
    strict: bool = False,
) -> FileReport:
    """Write a validated JSONL copy of a `datasets` dataset so the tokenizer can treat it as a file
    (incremental tokenization needs a file with a size and mtime to compare)."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = FileReport(str(out))
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in read_records(ds, report, columns, default_condition, think, strict):
            fh.write(json.dumps({"condition": r.condition, "instruction": r.instruction, "response": r.response}, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return report
