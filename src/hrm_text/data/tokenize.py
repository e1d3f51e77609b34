"""`hrm-text data tokenize`: record files -> per-file token arrays (docs/ARCHITECTURE.md#tokenized-layout).

Layout of the output directory:

    OUT/manifest.json                 which source produced which entry, with size/mtime/fingerprint
    OUT/files/<entry>/tokens.npy      all examples of the file back to back, smallest unsigned dtype
    OUT/files/<entry>/inst_start.npy  start of each prompt (<boq> <cond..> instruction <eoq>)
    OUT/files/<entry>/inst_len.npy
    OUT/files/<entry>/resp_start.npy  start of each response (response tokens <eoa>)
    OUT/files/<entry>/resp_len.npy
    OUT/files/<entry>/meta.json       name, source, rows, tokens, validation report

Why it is built this way:
* Incremental. A corpus grows file by file; re-tokenizing terabytes for one new file is waste. An
  entry is redone only when its source's size or mtime, the tokenizer, or the reading options
  changed; entries whose source disappeared (orphans) are deleted.
* Bounded memory. Files are streamed in chunks of rows and written straight to disk (.npy headers
  are patched at the end), so peak memory does not grow with the file or corpus size.
* Multiprocess. One worker process per file at a time (`--workers`); within a worker the Rust
  tokenizer runs single-threaded so that N workers use N cores.
* Crash-safe. Each entry is written to a temporary folder and renamed into place when complete; the
  manifest is rewritten after every finished file.

The entry name of a source is its path relative to the SRC folder given on the command line
(without suffix, e.g. `arith/train`), or the file stem for a SRC that is a file. Sampling rules
match prefixes of this name.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .records import ColumnMap, FileReport, RecordError, iter_source_files, read_records

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_HEADER_LEN = 128  # a 1-D .npy v1.0 header is always 128 bytes for any length < 10**20


def smallest_uint(max_value: int) -> np.dtype:
    """The smallest unsigned dtype holding `max_value` (docs/ARCHITECTURE.md#tokenized-layout)."""
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"{max_value} does not fit in 64 bits")


def _npy_header(dtype: np.dtype, n: int) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n,)})
    h = buf.getvalue()
    assert len(h) == _HEADER_LEN, len(h)
    return h


class NpyAppender:
    """Write a 1-D .npy file by appending chunks; the header's length is patched on close.

    Lets a worker stream an array of unknown final size to disk with O(chunk) memory.
    """

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path, self.dtype, self.n = path, np.dtype(dtype), 0
        self.fh = open(path, "wb")
        self.fh.write(_npy_header(self.dtype, 0))

    def append(self, arr: np.ndarray) -> None:
        a = np.ascontiguousarray(arr, dtype=self.dtype)
        self.fh.write(a.tobytes())
        self.n += a.size

    def close(self) -> None:
        self.fh.seek(0)
        self.fh.write(_npy_header(self.dtype, self.n))
        self.fh.close()


def shrink_npy(path: Path, chunk: int = 1 << 22) -> None:
    """Rewrite a 1-D .npy in the smallest unsigned dtype holding its maximum, chunk by chunk."""
    src = np.load(path, mmap_mode="r")
    mx = 0
    for i in range(0, len(src), chunk):
        mx = max(mx, int(src[i : i + chunk].max()))
    dt = smallest_uint(mx)
    if dt == src.dtype:
        return
    tmp = path.with_suffix(".shrink.npy")
    out = NpyAppender(tmp, dt)
    for i in range(0, len(src), chunk):
        out.append(src[i : i + chunk])
    out.close()
    del src
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Options:
    """Reading options; part of each entry's fingerprint so changing them re-tokenizes (a `--strict`
    re-run therefore re-validates files that were accepted leniently before)."""

    columns: str | None = None
    default_condition: str = "direct"
    think: bool = False
    strict: bool = False
    chunk_rows: int = 4096

    def fingerprint(self) -> str:
        return json.dumps([self.columns, self.default_condition, self.think, self.strict], sort_keys=True)


def entry_dirname(name: str) -> str:
    """Filesystem-safe folder for an entry name (`a/b` -> `a__b`)."""
    return name.replace("/", "__")


def discover_sources(srcs: Iterable[str | os.PathLike]) -> dict[str, Path]:
    """Map entry name -> source file. Raises ValueError on two sources with one name."""
    out: dict[str, Path] = {}
    for s in map(Path, srcs):
        if not s.exists():
            raise FileNotFoundError(f"{s} does not exist")
        files = [f for f in iter_source_files([s]) if f.suffix != ".txt"]
        for f in files:
            name = f.relative_to(s).with_suffix("").as_posix() if s.is_dir() else f.stem
            if name in out and out[name].resolve() != f.resolve():
                raise ValueError(f"two sources map to the entry name {name!r}: {out[name]} and {f}")
            out[name] = f
    return out


def tokenize_file(name: str, src: str, tokenizer_dir: str, out_dir: str, opts: Options) -> dict[str, Any]:
    """Tokenize one record file into `out_dir/files/<entry>` (runs in a worker process)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .tokenizer import TextTokenizer

    tok = TextTokenizer.load(tokenizer_dir)
    final = Path(out_dir) / "files" / entry_dirname(name)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tdt = smallest_uint(tok.vocab_size - 1)
    toks = NpyAppender(tmp / "tokens.npy", tdt)
    arrays = {k: NpyAppender(tmp / f"{k}.npy", np.uint64) for k in ("inst_start", "inst_len", "resp_start", "resp_len")}
    report = FileReport(src)
    prefix_cache: dict[str, list[int]] = {}
    eoq, eoa = tok.eoq_id, tok.eoa_id
    pos = 0
    rows = 0

    def flush(batch: list) -> None:
        nonlocal pos, rows
        if not batch:
            return
        inst = tok.encode_batch([r.instruction for r in batch])
        resp = tok.encode_batch([r.response for r in batch])
        flat: list[int] = []
        il = np.empty(len(batch), dtype=np.uint64)
        rl = np.empty(len(batch), dtype=np.uint64)
        for k, r in enumerate(batch):
            pre = prefix_cache.get(r.condition)
            if pre is None:
                pre = prefix_cache[r.condition] = tok.condition_prefix(r.condition)
            flat += pre
            flat += inst[k]
            flat.append(eoq)
            flat += resp[k]
            flat.append(eoa)
            il[k] = len(pre) + len(inst[k]) + 1
            rl[k] = len(resp[k]) + 1
        starts = pos + np.concatenate([[0], np.cumsum(il + rl)[:-1]]).astype(np.uint64)
        toks.append(np.asarray(flat, dtype=tdt))
        arrays["inst_start"].append(starts)
        arrays["inst_len"].append(il)
        arrays["resp_start"].append(starts + il)
        arrays["resp_len"].append(rl)
        pos += len(flat)
        rows += len(batch)

    batch: list = []
    for rec in read_records(src, report, ColumnMap.parse(opts.columns), opts.default_condition, opts.think, opts.strict):
        batch.append(rec)
        if len(batch) >= opts.chunk_rows:
            flush(batch)
            batch = []
    flush(batch)
    toks.close()
    for a in arrays.values():
        a.close()
    for k in arrays:
        shrink_npy(tmp / f"{k}.npy")
    meta = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "source": str(Path(src).resolve()),
        "rows": rows,
        "tokens": pos,
        "report": report.to_dict(),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return meta


def load_manifest(out_dir: Path) -> dict[str, Any]:
    f = out_dir / MANIFEST
    if f.is_file():
        return json.loads(f.read_text())
    return {"format_version": FORMAT_VERSION, "tokenizer": None, "entries": {}}


def _save_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out_dir / MANIFEST)


def tokenize_sources(
    srcs: Iterable[str | os.PathLike],
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    workers: int = 1,
    opts: Options | None = None,
    progress: Callable[[int], None] | None = None,
    on_file: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Incrementally tokenize sources into `out_dir`. Returns a summary dict.

    `progress(n_bytes)` is called as files finish; `on_file(meta)` with each finished entry's meta.
    """
    opts = opts or Options()
    out = Path(out_dir)
    (out / "files").mkdir(parents=True, exist_ok=True)
    tok_file = Path(tokenizer_dir) / "tokenizer.json"
    if not tok_file.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {tokenizer_dir} (create one with `hrm-text data tokenizer`)")
    from .tokenizer import TextTokenizer

    tok = TextTokenizer.load(tokenizer_dir)
    tok_fp = {"sha256": file_sha256(tok_file), "dir": str(Path(tokenizer_dir).resolve()), "vocab_size": tok.vocab_size,
              "pad_id": tok.pad_id, "eoa_id": tok.eoa_id, "eoq_id": tok.eoq_id, "boq_id": tok.boq_id,
              "condition_ids": tok.condition_ids}
    sources = discover_sources(srcs)
    manifest = load_manifest(out)
    entries: dict[str, Any] = manifest.get("entries", {})
    same_tok = manifest.get("tokenizer") and manifest["tokenizer"]["sha256"] == tok_fp["sha256"]
    # orphans: entries whose source is gone from this run's sources
    removed = []
    for name in list(entries):
        if name not in sources:
            shutil.rmtree(out / "files" / entry_dirname(name), ignore_errors=True)
            del entries[name]
            removed.append(name)
    # stray folders (e.g. interrupted .tmp)
    known = {entry_dirname(n) for n in sources}
    for d in (out / "files").iterdir():
        if d.name not in known:
            shutil.rmtree(d, ignore_errors=True)
    todo: list[tuple[str, Path, dict[str, Any]]] = []
    for name, f in sorted(sources.items()):
        st = f.stat()
        stamp = {"source": str(f.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "options": opts.fingerprint()}
        old = entries.get(name)
        done = (out / "files" / entry_dirname(name) / "meta.json").is_file()
        if same_tok and old and done and all(old.get(k) == v for k, v in stamp.items()):
            continue
        todo.append((name, f, stamp))
    manifest["tokenizer"] = tok_fp
    manifest["format_version"] = FORMAT_VERSION
    if not same_tok:
        entries.clear()
    manifest["entries"] = entries
    _save_manifest(out, manifest)
    t0 = time.time()
    n_tokens = 0
    reports: list[dict[str, Any]] = []

    def finish(name: str, stamp: dict[str, Any], meta: dict[str, Any]) -> None:
        nonlocal n_tokens
        entries[name] = {**stamp, "rows": meta["rows"], "tokens": meta["tokens"], "skipped": meta["report"]["skipped"]}
        _save_manifest(out, manifest)
        n_tokens += meta["tokens"]
        reports.append(meta["report"])
        if progress:
            progress(stamp["size"])
        if on_file:
            on_file(meta)

    args = lambda name, f: (name, str(f), str(tokenizer_dir), str(out), opts)  # noqa: E731
    if workers <= 1 or len(todo) <= 1:
        if len(todo) == 1 and workers > 1:
            os.environ["TOKENIZERS_PARALLELISM"] = "true"  # one file: let the Rust side use the cores
        for name, f, stamp in todo:
            finish(name, stamp, tokenize_file(*args(name, f)))
    else:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
            futs = {ex.submit(tokenize_file, *args(name, f)): (name, stamp) for name, f, stamp in todo}
            try:
                for fut in as_completed(futs):
                    name, stamp = futs[fut]
                    finish(name, stamp, fut.result())
            except BaseException:
                for fu in futs:
                    fu.cancel()
                raise
    # totals over every entry of the output (unchanged ones from the manifest), not only this run's
    skipped: dict[str, int] = {}
    for e in entries.values():
        for reason, n in (e.get("skipped") or {}).items():
            skipped[reason] = skipped.get(reason, 0) + int(n)
    return {
        "entries": len(entries),
        "rows_kept": sum(int(e.get("rows", 0)) for e in entries.values()),
        "rows_skipped": dict(sorted(skipped.items())),
        "tokenized": [n for n, _, _ in todo],
        "skipped_unchanged": len(sources) - len(todo),
        "removed_orphans": removed,
        "tokens": n_tokens,
        "seconds": time.time() - t0,
        "reports": reports,
    }


class TokenizedEntry:
    """One tokenized source file, memory-mapped (read side, used by the sampler)."""

    def __init__(self, root: Path, name: str) -> None:
        d = root / "files" / entry_dirname(name)
        self.name = name
        self.meta = json.loads((d / "meta.json").read_text())
        self.tokens = np.load(d / "tokens.npy", mmap_mode="r")
        self.inst_start = np.load(d / "inst_start.npy", mmap_mode="r")
        self.inst_len = np.load(d / "inst_len.npy", mmap_mode="r")
        self.resp_start = np.load(d / "resp_start.npy", mmap_mode="r")
        self.resp_len = np.load(d / "resp_len.npy", mmap_mode="r")

    def __len__(self) -> int:
        return int(self.inst_len.shape[0])


__all__ = ["tokenize_sources", "tokenize_file", "TokenizedEntry", "Options", "smallest_uint", "RecordError", "load_manifest"]
