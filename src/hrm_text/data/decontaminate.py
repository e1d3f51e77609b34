"""`hrm-text data decontaminate`: drop training rows that share a long n-gram with an evaluation item.

A training row is contaminated when its instruction or response contains any `n` consecutive
words (13 by default, the GPT-3 convention) of an evaluation text. Words are lowercase `\\w+` runs,
so case, punctuation and whitespace differences do not hide an overlap, and the check runs on the
cleaned text before (and independently of) any tokenizer. An evaluation text shorter than `n`
words but of at least `min_words` words is matched as a whole (its full word sequence), so short
questions are covered without matching on 3-word phrases.

The evaluation side is a set of (label, text) pairs built by the caller (the CLI gathers the
paper suite's eval splits and the built-in held-out files), which keeps this module on the data
floor. Memory: one dict entry per distinct evaluation n-gram (a few million for the paper suite,
a few hundred MB); the training side is streamed file by file, JSONL line by line and Parquet by
record batches, and written to a parallel folder in the same format. Lines that cannot be parsed
are copied unchanged and counted (`unreadable_kept`): deciding about them is the tokenizer's job,
and nothing is lost silently.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .records import RECORD_SUFFIXES

_WORD = re.compile(r"\w+")
DEFAULT_N = 13
DEFAULT_MIN_WORDS = 8
MAX_EXAMPLES = 5


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class EvalIndex:
    """Hashes of every evaluation n-gram (and of short texts as a whole) -> the label that owns it."""

    def __init__(self, n: int = DEFAULT_N, min_words: int = DEFAULT_MIN_WORDS) -> None:
        if n < 1 or min_words < 1:
            raise ValueError("n and min_words must be >= 1")
        self.n, self.min_words = n, min(min_words, n)
        self.grams: dict[int, str] = {}
        self.short_lengths: set[int] = set()  # lengths < n of whole short texts
        self.texts: Counter = Counter()  # label -> texts indexed

    def add(self, label: str, text: str) -> None:
        w = words(text)
        if len(w) >= self.n:
            for i in range(len(w) - self.n + 1):
                self.grams.setdefault(hash(tuple(w[i : i + self.n])), label)
        elif len(w) >= self.min_words:
            self.grams.setdefault(hash(tuple(w)), label)
            self.short_lengths.add(len(w))
        else:
            return
        self.texts[label] += 1

    def match(self, text: str) -> tuple[str, str] | None:
        """(label, the matching words) of the first overlap in `text`, or None."""
        w = words(text)
        for L in (self.n, *sorted(self.short_lengths)):
            for i in range(len(w) - L + 1):
                g = tuple(w[i : i + L])
                lab = self.grams.get(hash(g))
                if lab is not None:
                    return lab, " ".join(g)
        return None

    def __len__(self) -> int:
        return len(self.grams)


def strings_in(obj: Any) -> Iterator[str]:
    """Every string inside a decoded row (dict values, list items, recursively); keys starting
    with `_` are loader bookkeeping (paths, row numbers), not item text."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if not (isinstance(k, str) and k.startswith("_")):
                yield from strings_in(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from strings_in(v)


@dataclass
class FileResult:
    path: str
    rows: int = 0
    removed: int = 0
    unreadable_kept: int = 0
    by_label: Counter = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)  # first few removed rows

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "removed": self.removed, "unreadable_kept": self.unreadable_kept,
                "by_label": dict(self.by_label), "examples": self.examples}


def _row_text(row: dict[str, Any], fields: tuple[str, ...]) -> Iterator[str]:
    for f in fields:
        v = row.get(f)
        if isinstance(v, str):
            yield v


def _hit(index: EvalIndex, row: dict[str, Any], fields: tuple[str, ...]) -> tuple[str, str] | None:
    for t in _row_text(row, fields):
        m = index.match(t)
        if m:
            return m
    return None


def _note(res: FileResult, line: int, m: tuple[str, str]) -> None:
    res.removed += 1
    res.by_label[m[0]] += 1
    if len(res.examples) < MAX_EXAMPLES:
        res.examples.append({"row": line, "against": m[0], "ngram": m[1]})


def _filter_jsonl(src: Path, dst: Path, index: EvalIndex, fields: tuple[str, ...], res: FileResult) -> None:
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        for i, raw in enumerate(fi, 1):
            if not raw.strip():
                continue
            res.rows += 1
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                obj = None
            if not isinstance(obj, dict):
                res.unreadable_kept += 1
                fo.write(raw if raw.endswith(b"\n") else raw + b"\n")
                continue
            m = _hit(index, obj, fields)
            if m:
                _note(res, i, m)
            else:
                fo.write(raw if raw.endswith(b"\n") else raw + b"\n")


def _filter_parquet(src: Path, dst: Path, index: EvalIndex, fields: tuple[str, ...], res: FileResult, batch_rows: int) -> None:
    import pyarrow as pa  # lazy: the `data` extra
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(src, pre_buffer=False)  # bounded memory (see sources/base.py)
    n = 0
    with pq.ParquetWriter(dst, pf.schema_arrow) as w:
        for batch in pf.iter_batches(batch_size=batch_rows):
            cols = {f: batch.column(f).to_pylist() for f in fields if f in batch.schema.names}
            keep = []
            for j in range(batch.num_rows):
                n += 1
                res.rows += 1
                m = _hit(index, {f: c[j] for f, c in cols.items()}, fields)
                if m:
                    _note(res, n, m)
                else:
                    keep.append(j)
            if keep:
                w.write_table(pa.Table.from_batches([batch]).take(pa.array(keep)))


def decontaminate_dir(
    src: str | os.PathLike,
    out: str | os.PathLike,
    index: EvalIndex,
    fields: tuple[str, ...] = ("instruction", "response"),
    batch_rows: int = 4096,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write a decontaminated copy of every record file under `src` into `out` (same relative paths
    and formats) plus `out/decontamination.json` and `.md`. Returns the report dict."""
    s, o = Path(src), Path(out)
    if not s.is_dir():
        raise FileNotFoundError(f"{s} is not a folder")
    if o.resolve() == s.resolve() or s.resolve() in o.resolve().parents:
        raise ValueError(f"--out {o} must not be {s} or inside it (the copy would be read as input)")
    files = sorted(f for f in s.rglob("*") if f.is_file() and f.suffix in RECORD_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no .jsonl/.json/.parquet files under {s}")
    t0 = time.time()
    results: list[FileResult] = []
    for f in files:
        rel = f.relative_to(s)
        dst = o / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".tmp")
        res = FileResult(rel.as_posix())
        if f.suffix == ".parquet":
            _filter_parquet(f, tmp, index, fields, res, batch_rows)
        else:
            _filter_jsonl(f, tmp, index, fields, res)
        os.replace(tmp, dst)
        results.append(res)
        if progress:
            progress(f.stat().st_size)
    by_source: dict[str, dict[str, Any]] = {}
    for r in results:
        parts = Path(r.path).parts
        key = "/".join(parts[:2]) if parts[0] in ("data", "data_clustered") and len(parts) > 2 else Path(r.path).with_suffix("").as_posix()
        agg = by_source.setdefault(key, {"files": 0, "rows": 0, "removed": 0, "by_label": Counter()})
        agg["files"] += 1
        agg["rows"] += r.rows
        agg["removed"] += r.removed
        agg["by_label"].update(r.by_label)
    report = {
        "n": index.n, "min_words": index.min_words, "eval_ngrams": len(index), "eval_texts": dict(index.texts),
        "rows": sum(r.rows for r in results), "removed": sum(r.removed for r in results),
        "seconds": round(time.time() - t0, 2),
        "sources": {k: {**v, "by_label": dict(v["by_label"])} for k, v in sorted(by_source.items())},
        "files": [r.to_dict() for r in results],
    }
    (o / "decontamination.json").write_text(json.dumps(report, indent=2) + "\n")
    (o / "decontamination.md").write_text(render_report(report))
    return report


def render_report(rep: dict[str, Any]) -> str:
    lines = [
        "# Decontamination report",
        "",
        f"- {rep['n']}-word overlap (texts of {rep['min_words']}-{rep['n'] - 1} words matched whole); "
        f"{rep['eval_ngrams']:,} evaluation n-grams from {sum(rep['eval_texts'].values()):,} texts",
        f"- evaluation texts by set: {', '.join(f'{k} {v:,}' for k, v in sorted(rep['eval_texts'].items())) or 'none'}",
        f"- rows: {rep['rows']:,}; removed: {rep['removed']:,} ({100 * rep['removed'] / max(1, rep['rows']):.3f}%)",
        "",
        "| source | files | rows | removed | removed % | matched sets |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for k, v in rep["sources"].items():
        sets = ", ".join(f"{a} {b:,}" for a, b in sorted(v["by_label"].items(), key=lambda x: -x[1])) or "-"
        lines.append(f"| {k} | {v['files']} | {v['rows']:,} | {v['removed']:,} | {100 * v['removed'] / max(1, v['rows']):.3f}% | {sets} |")
    return "\n".join(lines) + "\n"


def index_from_pairs(pairs: Iterable[tuple[str, str]], n: int = DEFAULT_N, min_words: int = DEFAULT_MIN_WORDS) -> EvalIndex:
    idx = EvalIndex(n, min_words)
    seen: set[tuple[str, str]] = set()
    for label, t in pairs:
        if (label, t) not in seen:  # DROP repeats each passage for every question
            seen.add((label, t))
            idx.add(label, t)
    return idx
