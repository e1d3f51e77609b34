"""The machinery every raw-source converter shares: streaming readers, a bounded-memory writer,
validation of the mapped rows and counted drop reasons.

A converter is a `Source`: which files it reads, which columns, and a `map_row(row, ctx)` that
yields `Out(key, condition, instruction, response)` rows or `Drop(reason)`. One raw row may give
several outputs (MATH: the worked solution as `cot` and the boxed answer as `direct`). `key` is
the output path relative to OUT without suffix, in the layout of the published cleaned data
(`data_clustered/flan/<subset>__<task>`, `data/gsm8k_train`), so the paper recipe's rules and the
decontamination work the same on converted and downloaded data.

Memory is bounded whatever the source size: JSONL is read line by line, Parquet by record batches
of `batch_rows` rows with only the needed columns, CSV and text line by line; output rows go
straight to per-key JSONL files through a bounded pool of open handles. The reference cleaners
load whole datasets (about 512 GiB of RAM for FLAN); here the peak is set by one batch.
Output files are written as `<key>.jsonl.tmp` and renamed when the run completes, so an
interrupted run never leaves a half file that looks finished.
"""

from __future__ import annotations

import csv
import json
import os
import re
import string
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

from ..records import strip_think
from ..records import parse_condition

MAX_OPEN_FILES = 128
MAX_EXAMPLE_LINES = 5


class Out(NamedTuple):
    key: str
    condition: str
    instruction: str
    response: str


class Drop(NamedTuple):
    reason: str


class ConvertError(ValueError):
    """A converter cannot run at all (no input files, unknown source); the message says why."""


@dataclass(frozen=True)
class RowContext:
    """Where a raw row comes from: its file and that file's path relative to the raw root."""

    path: Path
    rel: Path  # relative to RAW_PATH (a file given directly: its name)


@dataclass(frozen=True)
class Source:
    """One raw source: how to read it and how to map a row."""

    name: str
    hub: str  # the raw dataset (Hub name or download)
    map_row: Callable[[Mapping[str, Any], RowContext], Iterable[Out | Drop]]
    columns: tuple[str, ...] | None  # Parquet projection; None reads every column
    suffixes: tuple[str, ...] = (".parquet", ".jsonl", ".json")
    think: bool = False  # strip <think>...</think> from responses
    whole_file: bool = False  # one small file = one row {"_text": content} (AMPS Mathematica)
    verified: str = ""  # where the column names come from (docs/DATA.md lists them)


@dataclass
class ConvertReport:
    source: str
    files: int = 0
    rows_read: int = 0
    rows_written: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first "file:row" places
    outputs: dict[str, int] = field(default_factory=dict)  # key -> rows
    seconds: float = 0.0

    def drop(self, reason: str, where: str) -> None:
        self.dropped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < MAX_EXAMPLE_LINES:
            ex.append(where)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "files": self.files, "rows_read": self.rows_read, "rows_written": self.rows_written,
                "dropped": dict(self.dropped), "examples": self.examples, "outputs": self.outputs,
                "seconds": round(self.seconds, 3)}

    def summary(self) -> str:
        drops = ", ".join(f"{n:,} {r}" for r, n in self.dropped.most_common()) or "none"
        return (f"{self.source}: {self.rows_read:,} rows read from {self.files} file(s), {self.rows_written:,} rows written "
                f"to {len(self.outputs)} file(s); dropped: {drops}")


# ---------------------------------------------------------------------------------------------
# Reading


def iter_raw_rows(path: Path, columns: Sequence[str] | None = None, batch_rows: int = 1024,
                  whole_file: bool = False) -> Iterator[tuple[int, Any]]:
    """Yield (1-based row number, row) from a raw file; a row that cannot be decoded is yielded
    as a `Drop` so it is counted, never fatal. Parquet is read by batches of `batch_rows`."""
    suf = path.suffix
    if whole_file:
        try:
            yield 1, {"_text": path.read_text(encoding="utf-8")}
        except UnicodeDecodeError:
            yield 1, Drop("invalid_utf8")
    elif suf == ".parquet":
        import pyarrow.parquet as pq  # lazy: pyarrow is the `data` extra

        # pre_buffer=False: with it on, pyarrow keeps every pre-read column chunk until the file is done,
        # so RSS grows with the file (measured: 608 vs 199 MiB on a 0.5 GB file)
        pf = pq.ParquetFile(path, pre_buffer=False)
        cols = None
        if columns is not None:
            have = set(pf.schema_arrow.names)
            cols = [c for c in columns if c in have]  # a missing column shows up as missing_field per row
        n = 0
        for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
            for row in batch.to_pylist():
                n += 1
                yield n, row
    elif suf == ".jsonl":
        with open(path, "rb") as fh:
            for i, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    yield i, Drop("malformed_json")
                    continue
                yield i, obj if isinstance(obj, dict) else Drop("malformed_json")
    elif suf == ".json":
        # small sources only (Platypus/ARB ship one JSON array per file): whole-file read is bounded by them
        try:
            obj = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError):
            yield 1, Drop("malformed_json")
            return
        items = obj if isinstance(obj, list) else [obj]
        for i, x in enumerate(items, 1):
            yield i, x if isinstance(x, dict) else Drop("malformed_json")
    elif suf == ".csv":
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            for i, rec in enumerate(csv.reader(fh), 1):
                if i > 1:  # line 1 is the header
                    yield i, {"_fields": rec}
    elif suf == ".txt":
        # DeepMind mathematics: a question line, then its answer line
        with open(path, encoding="utf-8", errors="replace") as fh:
            q: str | None = None
            for i, line in enumerate(fh, 1):
                if q is None:
                    q = line.strip()
                else:
                    yield i - 1, {"question": q, "answer": line.strip()}
                    q = None
            if q is not None:
                yield i, Drop("unpaired_line")
    else:
        raise ConvertError(f"{path}: unsupported file type {suf!r}")


def raw_files(raw: Path, suffixes: Sequence[str]) -> list[tuple[Path, Path]]:
    """(file, path relative to `raw`) for a file or every matching file under a folder, sorted."""
    if raw.is_file():
        return [(raw, Path(raw.name))]
    if not raw.is_dir():
        raise ConvertError(f"{raw} does not exist")
    return [(f, f.relative_to(raw)) for f in sorted(raw.rglob("*")) if f.is_file() and f.suffix in suffixes]


# ---------------------------------------------------------------------------------------------
# Writing


class ShardWriter:
    """Append rows to `OUT/<key>.jsonl.tmp` files with at most `max_open` handles open (LRU), so
    a source with thousands of tasks (FLAN) needs neither thousands of descriptors nor buffers."""

    def __init__(self, out: Path, max_open: int = MAX_OPEN_FILES) -> None:
        self.out, self.max_open = out, max_open
        self.handles: OrderedDict[str, Any] = OrderedDict()
        self.created: set[str] = set()

    def _tmp(self, key: str) -> Path:
        return self.out / f"{key}.jsonl.tmp"

    def write(self, key: str, obj: dict[str, str]) -> None:
        fh = self.handles.get(key)
        if fh is None:
            if len(self.handles) >= self.max_open:
                _, old = self.handles.popitem(last=False)
                old.close()
            p = self._tmp(key)
            p.parent.mkdir(parents=True, exist_ok=True)
            fh = open(p, "a" if key in self.created else "w", encoding="utf-8", buffering=1 << 16)
            self.created.add(key)
            self.handles[key] = fh
        else:
            self.handles.move_to_end(key)
        fh.write(json.dumps(obj, ensure_ascii=False) + "\n")

    def close(self, commit: bool = True) -> None:
        for fh in self.handles.values():
            fh.close()
        self.handles.clear()
        for key in self.created:
            tmp = self._tmp(key)
            if commit:
                os.replace(tmp, self.out / f"{key}.jsonl")
            else:
                tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Shared mapping helpers


_SAFE = set(string.ascii_letters + string.digits + "_-. ")


def safe_name(name: str) -> str:
    """A file-name-safe task name: the reference's rule (letters, digits, `_-. ` kept, others `_`),
    so our file names equal the published ones."""
    return "".join(c if c in _SAFE else "_" for c in name)


def text(row: Mapping[str, Any], key: str) -> str:
    """A string field; raises KeyError (counted as missing_field) when absent or null."""
    v = row.get(key)
    if v is None:
        raise KeyError(key)
    if not isinstance(v, str):
        raise TypeError(key)
    return v


def last_boxed(s: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) with balanced braces, stripped."""
    i = s.rfind("\\boxed")
    if i < 0:
        i = s.rfind("\\fbox")
        if i < 0:
            return None
    depth, start = 0, None
    for j in range(i, len(s)):
        if s[j] == "{":
            depth += 1
            if start is None:
                start = j
        elif s[j] == "}":
            depth -= 1
            if depth == 0 and start is not None:
                return s[start + 1 : j].strip()
    return None


_PROOF_RE = re.compile(r"prove|show that")


def is_proof(question: str) -> bool:
    """The reference's rough proof filter: the question asks to prove or to show that."""
    return bool(_PROOF_RE.search(question.lower()))


# ---------------------------------------------------------------------------------------------
# Running a converter


def _check(o: Out, think: bool) -> tuple[str | None, Out]:
    """Validate one mapped row; returns (drop reason or None, row with <think> stripped)."""
    try:
        parse_condition(o.condition)
    except ValueError:
        return "unknown_condition", o
    resp = strip_think(o.response) if think else o.response
    if not o.instruction.strip():
        return "empty_instruction", o
    if not resp.strip():
        return "empty_response", o
    if resp.strip() == o.instruction.strip():
        return "degenerate", o  # the answer repeats the question: teaches copying, not answering
    try:
        o.instruction.encode("utf-8")
        resp.encode("utf-8")
    except UnicodeEncodeError:
        return "invalid_utf8", o
    return None, o._replace(response=resp)


def convert(
    src: Source,
    raw: str | os.PathLike,
    out: str | os.PathLike,
    batch_rows: int = 1024,
    progress: Callable[[int], None] | None = None,
    limit: int | None = None,
) -> ConvertReport:
    """Stream `raw` (a file or folder) through `src` into `out`; returns the counts.

    `progress(n_bytes)` is called as each input file finishes; `limit` stops after that many raw
    rows (a quick look at a big source). The report is also written to
    `out/convert_reports/<source>.json` (outside data/ and data_clustered/, so it is never
    mistaken for records).
    """
    files = raw_files(Path(raw), src.suffixes)
    if not files:
        raise ConvertError(f"no {'/'.join(src.suffixes)} files under {raw} for source {src.name!r}")
    outp = Path(out)
    rep = ConvertReport(src.name, files=len(files))
    writer = ShardWriter(outp)
    t0 = time.time()
    ok = False
    try:
        for path, rel in files:
            ctx = RowContext(path, rel)
            for line, row in iter_raw_rows(path, src.columns, batch_rows, src.whole_file):
                if limit is not None and rep.rows_read >= limit:
                    break
                rep.rows_read += 1
                where = f"{rel}:{line}"
                if isinstance(row, Drop):
                    rep.drop(row.reason, where)
                    continue
                try:
                    results = list(src.map_row(row, ctx))
                except KeyError:
                    rep.drop("missing_field", where)
                    continue
                except (TypeError, ValueError, AttributeError, IndexError):
                    rep.drop("malformed_row", where)
                    continue
                for r in results:
                    if isinstance(r, Drop):
                        rep.drop(r.reason, where)
                        continue
                    reason, r = _check(r, src.think)
                    if reason:
                        rep.drop(reason, where)
                        continue
                    writer.write(r.key, {"condition": r.condition, "instruction": r.instruction, "response": r.response})
                    rep.outputs[r.key] = rep.outputs.get(r.key, 0) + 1
                    rep.rows_written += 1
            if progress:
                progress(path.stat().st_size)
        ok = True
    finally:
        writer.close(commit=ok)
    rep.seconds = time.time() - t0
    rd = outp / "convert_reports"
    rd.mkdir(parents=True, exist_ok=True)
    (rd / f"{src.name}.json").write_text(json.dumps(rep.to_dict(), indent=2) + "\n")
    return rep
