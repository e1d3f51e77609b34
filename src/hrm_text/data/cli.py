"""`hrm-text data ...`: builtin corpus, tokenizer training, tokenization, stratified sampling.

Every user mistake (missing file, bad JSON line under --strict, bad rules file) ends in one red
line naming the file (and line) and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer
from tqdm import tqdm

data_app = typer.Typer(
    help="Build training data: builtin offline corpus, tokenizer, tokenized arrays, per-epoch samples.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(msg: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


@data_app.command("builtin")
def builtin_cmd(
    out_dir: Path = typer.Argument(..., help="Folder to write train/ and heldout/ JSONL files into."),
    size: str = typer.Option("quickstart", help="quickstart (~7 MB, <1 min on 2 cores), small, medium, full (tens of millions of rows)."),
    seed: int = typer.Option(0, help="Generation seed; the same seed gives byte-identical files."),
    workers: int = typer.Option(0, help="Worker processes (0 = all cores, at most 16)."),
    parts: str = typer.Option("arith,dm_math,sudoku", help="Comma-separated subset of arith, dm_math, sudoku."),
) -> None:
    """Write the offline corpus: arithmetic, DeepMind mathematics and Sudoku, with held-out splits."""
    from .builtin import SIZES, write_builtin_corpus

    if size not in SIZES:
        raise _fail(f"unknown --size {size!r}; choose one of {', '.join(SIZES)}")
    bar = tqdm(desc="builtin", unit=" rows")

    def tick(stage: str, n: int) -> None:
        bar.set_postfix_str(stage)
        bar.update(n)

    try:
        m = write_builtin_corpus(out_dir, size=size, seed=seed, workers=workers or None, parts=[p.strip() for p in parts.split(",") if p.strip()], progress=tick)
    except (ValueError, OSError) as e:
        raise _fail(str(e))
    finally:
        bar.close()
    total = sum(m["files"].values())
    typer.echo(f"wrote {total:,} rows in {len(m['files'])} files to {out_dir} in {m['seconds']} s")
    typer.echo(f"  train:    {out_dir}/train   (pass this folder to `hrm-text data tokenize`)")
    typer.echo(f"  held-out: {out_dir}/heldout (arith_test, arith_long, dm_math_interpolate, dm_math_extrapolate, sudoku_hard)")
    if m.get("dm_math_failed_modules"):
        typer.secho(f"  skipped DM modules: {', '.join(m['dm_math_failed_modules'])}", fg=typer.colors.YELLOW)


@data_app.command("tokenizer")
def tokenizer_cmd(
    srcs: List[Path] = typer.Argument(..., help="JSONL/Parquet files or folders (and .txt files) to learn merges from."),
    out: Path = typer.Option(..., "--out", help="Folder for tokenizer.json (+ transformers config files)."),
    vocab_size: int = typer.Option(65536, help="Vocabulary size incl. 8 special tokens (SPEC: 65,536; small, e.g. 512, for `tiny`)."),
    max_texts: Optional[int] = typer.Option(None, help="Read at most this many texts (BPE statistics saturate early)."),
    min_frequency: int = typer.Option(2, help="Minimum pair frequency for a merge (SPEC: 2)."),
) -> None:
    """Train the byte-level BPE tokenizer with the SPEC split pattern and special tokens."""
    from .tokenizer import train_tokenizer

    for s in srcs:
        if not s.exists():
            raise _fail(f"{s} does not exist")
    try:
        tok = train_tokenizer(srcs, vocab_size=vocab_size, out_dir=out, min_frequency=min_frequency, max_texts=max_texts, show_progress=True)
    except (ValueError, OSError) as e:
        raise _fail(str(e))
    typer.echo(f"tokenizer with {tok.vocab_size:,} tokens written to {out} (pad={tok.pad_id} boq={tok.boq_id} eoq={tok.eoq_id} eoa={tok.eoa_id})")


@data_app.command("tokenize")
def tokenize_cmd(
    srcs: List[str] = typer.Argument(..., help="JSONL/Parquet files or folders; `hf:NAME[:SPLIT]` or a `save_to_disk` folder for `datasets`."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="Tokenizer folder from `hrm-text data tokenizer`."),
    out: Path = typer.Option(..., "--out", help="Output folder (re-running only redoes new or changed sources)."),
    workers: int = typer.Option(0, help="Worker processes, one file each (0 = all cores)."),
    columns: Optional[str] = typer.Option(None, help="Column mapping, e.g. instruction=question,response=answer,condition="),
    default_condition: str = typer.Option("direct", help="Condition for rows without one."),
    think: bool = typer.Option(False, "--strip-think", help="Remove <think>...</think> from responses."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad row instead of counting and skipping it."),
) -> None:
    """Tokenize record files into per-file token arrays (incremental, multiprocess, bounded memory)."""
    from .records import ColumnMap, RecordError, export_dataset_to_jsonl, load_dataset_rows
    from .tokenize import Options, tokenize_sources
    from .tokenizer import parse_condition

    try:
        parse_condition(default_condition)
        ColumnMap.parse(columns)
    except ValueError as e:
        raise _fail(str(e))
    paths: list[str] = []
    ds_skipped: dict[str, int] = {}  # rows a `datasets` export dropped: they never reach a file
    for s in srcs:
        p = Path(s)
        is_ds = s.startswith("hf:") or (p.is_dir() and any((p / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")))
        if is_ds:
            # `datasets` sources become validated JSONL under OUT/_datasets so they are files too
            name, _, split = (s[3:] if s.startswith("hf:") else s).partition(":")
            try:
                ds = load_dataset_rows(name, split=split or "train")
            except (ValueError, OSError) as e:
                raise _fail(str(e))
            safe = name.strip("/").replace("/", "__")
            dst = out / "_datasets" / f"{safe}.jsonl"
            try:
                rep = export_dataset_to_jsonl(ds, dst, ColumnMap.parse(columns), default_condition, think, strict)
            except RecordError as e:
                raise _fail(f"{s}: {e}")
            if rep.num_skipped:
                typer.secho(rep.summary(), fg=typer.colors.YELLOW, err=True)
            for reason, n in rep.skipped.items():
                ds_skipped[reason] = ds_skipped.get(reason, 0) + n
            paths.append(str(dst))
        elif not p.exists():
            raise _fail(f"{s} does not exist")
        else:
            paths.append(s)
    from .records import iter_source_files

    total = sum(f.stat().st_size for f in iter_source_files(paths))
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="tokenize")

    def on_file(meta: dict) -> None:
        from .records import FileReport

        rep = meta["report"]
        if sum(rep["skipped"].values()):
            fr = FileReport(rep["path"])
            fr.skipped.update(rep["skipped"])
            fr.first_lines = rep["first_lines"]
            tqdm.write(fr.summary())

    try:
        res = tokenize_sources(
            paths, tokenizer, out, workers=workers or (os.cpu_count() or 1),
            opts=Options(columns=columns, default_condition=default_condition, think=think, strict=strict),
            progress=bar.update, on_file=on_file,
        )
    except RecordError as e:
        raise _fail(str(e))
    except (ValueError, OSError) as e:
        raise _fail(str(e))
    finally:
        bar.close()
    tps = res["tokens"] / res["seconds"] if res["seconds"] > 0 else 0.0
    typer.echo(
        f"{len(res['tokenized'])} file(s) tokenized ({res['tokens']:,} tokens, {tps:,.0f} tokens/s), "
        f"{res['skipped_unchanged']} unchanged, {len(res['removed_orphans'])} orphan(s) removed -> {out}"
    )
    typer.echo(row_totals_line(res["entries"], res["rows_kept"], res["rows_skipped"], ds_skipped))


def row_totals_line(n_files: int, kept: int, skipped: dict[str, int], extra_skipped: dict[str, int] | None = None) -> str:
    """`rows across N file(s): K kept, S skipped (n reason, ...)`, reasons in alphabetical order."""
    total = dict(skipped)
    for reason, n in (extra_skipped or {}).items():
        total[reason] = total.get(reason, 0) + n
    n_skip = sum(total.values())
    why = f" ({', '.join(f'{n:,} {r}' for r, n in sorted(total.items()) if n)})" if n_skip else ""
    return f"rows across {n_files} file(s): {kept:,} kept, {n_skip:,} skipped{why}"


@data_app.command("sample")
def sample_cmd(
    tokenized: Path = typer.Argument(..., help="Output folder of `hrm-text data tokenize`."),
    out: Path = typer.Option(..., "--out", help="Folder to write (memory-mapped at training time); replaced if it is a previous sample."),
    rules: Optional[Path] = typer.Option(None, "--rules", help="Rules YAML (see docs/DATA.md); default: keep everything, truncate long."),
    epochs: int = typer.Option(1, help="Number of epochs to sample (each a fresh seeded sample, unseen rows first)."),
    seed: Optional[int] = typer.Option(None, help="Override the rules file's seed."),
    context: Optional[int] = typer.Option(None, help="Override the rules file's context (examples hold context + 1 tokens)."),
) -> None:
    """Stratified per-epoch sampling with per-source caps, repeats and long-context handling."""
    from .sample import RulesError, load_rules, sample_corpus

    try:
        r = load_rules(rules)
    except RulesError as e:
        raise _fail(str(e))
    if seed is not None:
        r.seed = seed
    if context is not None:
        r.context = context
    if epochs < 1:
        raise _fail("--epochs must be >= 1")
    if not (tokenized / "manifest.json").is_file():
        raise _fail(f"{tokenized} is not a tokenized folder (no manifest.json); run `hrm-text data tokenize` first")
    bar = tqdm(desc="sample", unit=" sources")

    def prog(name: str) -> None:
        bar.set_postfix_str(name[-40:])
        bar.update(1)

    try:
        meta = sample_corpus(tokenized, out, r, epochs, progress=prog)
    except (ValueError, OSError) as e:
        raise _fail(str(e))
    finally:
        bar.close()
    typer.echo(
        f"{meta['num_examples']:,} examples, {meta['unique_tokens']:,} unique tokens; "
        f"tokens per epoch: {', '.join(f'{t:,}' for t in meta['epoch_tokens'])} -> {out} (report: {out}/report.md)"
    )


def register(app: typer.Typer) -> None:
    """Attach `data` to the root `hrm-text` command."""
    app.add_typer(data_app, name="data")
