"""`hrm-text data ...`: builtin corpus, tokenizer training, tokenization, stratified sampling, and the
paper's data: recipe, download, raw-source converters, decontamination.

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
    size: str = typer.Option("quickstart", help="quickstart (~7 MB, <1 min on 2 cores), study (docs/STUDIES.md), small, medium, full (tens of millions of rows)."),
    seed: int = typer.Option(0, help="Generation seed; the same seed gives byte-identical files."),
    workers: int = typer.Option(0, help="Worker processes (0 = all cores, at most 16)."),
    parts: str = typer.Option("arith,dm_math,sudoku", help="Comma-separated subset of arith, dm_math, sudoku, nl_docs (opt-in: question/answer pairs from the docstrings of the standard library and installed packages; a few minutes)."),
) -> None:
    """Write the offline corpus: arithmetic, DeepMind mathematics and Sudoku (and optionally
    natural-language docstring Q/A), with held-out splits."""
    from hrm_text.data.builtin import SIZES, write_builtin_corpus

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
    typer.echo(f"  held-out: {out_dir}/heldout ({', '.join(p.stem for p in sorted(Path(out_dir, 'heldout').glob('*.jsonl')))})")
    if m.get("dm_math_failed_modules"):
        typer.secho(f"  skipped DM modules: {', '.join(m['dm_math_failed_modules'])}", fg=typer.colors.YELLOW)


@data_app.command("tokenizer")
def tokenizer_cmd(
    srcs: List[Path] = typer.Argument(..., help="JSONL/Parquet files or folders (and .txt files) to learn merges from."),
    out: Path = typer.Option(..., "--out", help="Folder for tokenizer.json (+ transformers config files)."),
    vocab_size: int = typer.Option(65536, help="Vocabulary size incl. 8 special tokens (the paper: 65,536; small, e.g. 512, for `tiny`)."),
    max_texts: Optional[int] = typer.Option(None, help="Read at most this many texts (BPE statistics saturate early)."),
    min_frequency: int = typer.Option(2, help="Minimum pair frequency for a merge (the paper: 2)."),
) -> None:
    """Train the byte-level BPE tokenizer with the paper's split pattern and special tokens."""
    from hrm_text.data.tokenizer import train_tokenizer

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
    from hrm_text.data.records import ColumnMap, RecordError, export_dataset_to_jsonl, load_dataset_rows
    from hrm_text.data.tokenize import Options, tokenize_sources
    from hrm_text.data.records import parse_condition

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
    from hrm_text.data.records import iter_source_files

    total = sum(f.stat().st_size for f in iter_source_files(paths))
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="tokenize")

    def on_file(meta: dict) -> None:
        from hrm_text.data.records import FileReport

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
    from hrm_text.data.sample import RulesError, load_rules, sample_corpus

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


@data_app.command("recipe")
def recipe_cmd(
    name: str = typer.Argument(..., help="Recipe name: `paper` (the reference run's sampling rules)."),
    out: Path = typer.Option(..., "--out", help="Folder for rules.yaml and README.md."),
    scale: float = typer.Option(1.0, help="Multiply every per-file cap (a small value tries the rules on a small copy)."),
) -> None:
    """Write a data recipe: the rules file for `data sample` and a README with sources, sizes and commands."""
    from hrm_text.data.paper import write_recipe

    if name != "paper":
        raise _fail(f"unknown recipe {name!r}; known: paper")
    try:
        paths = write_recipe(out, scale=scale)
    except (ValueError, OSError) as e:
        raise _fail(str(e))
    typer.echo(f"wrote {', '.join(str(p) for p in paths)}")


@data_app.command("download")
def download_cmd(
    name: str = typer.Argument(..., help="Dataset: `paper` (sapientinc/HRM-Text-data-io-cleaned-20260515, ~326 GiB)."),
    out: Path = typer.Option(..., "--out", help="Folder to write data/ and data_clustered/ into."),
    source: Optional[Path] = typer.Option(None, "--from", help="A local folder with the same layout (no network needed)."),
    revision: str = typer.Option("f033bc0e1a81634385093afc60445a52a7ade64a", help="Dataset revision (commit or `main`)."),
) -> None:
    """Fetch the published cleaned data (Hugging Face, resumable) or link it from a local copy."""
    from hrm_text.data.paper import DownloadError, download_paper_data

    if name != "paper":
        raise _fail(f"unknown dataset {name!r}; known: paper")
    try:
        r = download_paper_data(out, source=source, revision=revision)
    except (DownloadError, OSError) as e:
        raise _fail(str(e))
    typer.echo(f"{r['files']:,} files, {r['bytes'] / 2**30:.2f} GiB from {r['from']} -> {out}")
    typer.echo(f"  next: hrm-text data tokenize {out}/data {out}/data_clustered --tokenizer TOK --out TOKENIZED")


@data_app.command("convert")
def convert_cmd(
    source: str = typer.Argument(..., help="Raw source: flan, tasksource, synth, openthoughts2, acereason, openmathinstruct2, gsm8k, math, no_robots, ... (a wrong name lists all)."),
    raw_path: Path = typer.Argument(..., help="The raw dataset: a file or a folder of its files (Parquet/JSONL/...)."),
    out: Path = typer.Option(..., "--out", help="Folder to write data/ and data_clustered/ into (the published layout)."),
    batch_rows: int = typer.Option(1024, help="Parquet rows per read batch (memory is bounded by one batch)."),
    limit: Optional[int] = typer.Option(None, help="Stop after this many raw rows (a quick look at a large source)."),
) -> None:
    """Convert one raw public source into condition/instruction/response JSONL, streaming, with counted drops."""
    from hrm_text.data.sources import ConvertError, convert, get_source
    from hrm_text.data.sources.base import raw_files

    try:
        src = get_source(source)
        total = sum(f.stat().st_size for f, _ in raw_files(raw_path, src.suffixes))
    except ConvertError as e:
        raise _fail(str(e))
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"convert {source}")
    try:
        rep = convert(src, raw_path, out, batch_rows=batch_rows, progress=bar.update, limit=limit)
    except (ConvertError, OSError) as e:
        raise _fail(str(e))
    finally:
        bar.close()
    typer.echo(rep.summary())
    for reason, places in rep.examples.items():
        typer.echo(f"  {reason}: e.g. {', '.join(places)}")
    typer.echo(f"report: {out}/convert_reports/{source}.json")
    if rep.rows_written == 0:
        raise _fail(f"no rows written from {raw_path}: check the source name and the file's columns ({src.verified})", code=1)


def _eval_texts(against: str, data_dir: Optional[Path], builtin: Optional[Path], benchmarks: Optional[str],
                hub: bool, skip_missing: bool) -> tuple[list[tuple[str, str]], list[str]]:
    """(label, text) pairs of the evaluation side and the names of the sets left out."""
    from hrm_text.data.decontaminate import strings_in
    from hrm_text.data.records import read_records

    pairs: list[tuple[str, str]] = []
    missing: list[str] = []
    if against == "paper":
        # commands floor: the CLI may reach up to eval; the decontamination module itself does not
        from hrm_text.eval.runner import BENCHMARKS, PAPER_BENCHMARKS, MissingBenchmarkData, canonical_benchmark, load_benchmark_rows

        names = [canonical_benchmark(b) for b in benchmarks.split(",")] if benchmarks else list(PAPER_BENCHMARKS)
        for name in names:
            try:
                rows = load_benchmark_rows(name, BENCHMARKS[name].eval_split, data_dir, source="hub" if hub else "local")
            except MissingBenchmarkData as e:
                if not skip_missing:
                    raise _fail(f"{e}\n(pass --skip-missing to decontaminate against the benchmarks that are present)")
                missing.append(name)
                continue
            pairs += [(name, t) for r in rows for t in strings_in(r)]
    if builtin is not None:
        from hrm_text.data.builtin import builtin_heldout_files

        files = builtin_heldout_files(builtin)
        if not files:
            raise _fail(f"no built-in held-out files under {builtin} (write them with `hrm-text data builtin`)")
        for name, path in files.items():
            for r in read_records(path):
                pairs += [(f"builtin/{name}", r.instruction), (f"builtin/{name}", r.response)]
    elif against == "builtin":
        raise _fail("--against builtin needs --builtin CORPUS_DIR (the folder written by `hrm-text data builtin`)")
    return pairs, missing


@data_app.command("decontaminate")
def decontaminate_cmd(
    src: Path = typer.Argument(..., help="Folder of record files (e.g. the downloaded or converted data/ + data_clustered/)."),
    out: Path = typer.Option(..., "--out", help="Folder for the decontaminated copy (same layout) and decontamination.md/.json."),
    against: str = typer.Option("paper", help="paper: the paper suite's eval splits (+ built-in held-out with --builtin); builtin: only those."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Benchmark files (as for `hrm-text eval`; default $EVAL_DATA_DIR)."),
    builtin: Optional[Path] = typer.Option(None, "--builtin", help="A `hrm-text data builtin` folder: its held-out sets are added."),
    benchmarks: Optional[str] = typer.Option(None, help="Comma-separated subset of the paper's benchmarks."),
    n: int = typer.Option(13, help="Overlap length in words."),
    min_words: int = typer.Option(8, help="Evaluation texts shorter than n words but at least this long are matched whole."),
    hub: bool = typer.Option(False, "--hub", help="Load benchmarks from the Hugging Face Hub (network) instead of --data-dir."),
    skip_missing: bool = typer.Option(False, "--skip-missing", help="Go on without benchmarks whose files are absent (listed in the output)."),
) -> None:
    """Drop training rows sharing an n-gram (13 words) with an evaluation item; writes a per-source report."""
    from hrm_text.data.decontaminate import decontaminate_dir, index_from_pairs

    if against not in ("paper", "builtin"):
        raise _fail(f"unknown --against {against!r}; choose paper or builtin")
    if not src.is_dir():
        raise _fail(f"{src} is not a folder")
    if data_dir is None and os.environ.get("EVAL_DATA_DIR"):
        data_dir = Path(os.environ["EVAL_DATA_DIR"])
    try:
        pairs, missing = _eval_texts(against, data_dir, builtin, benchmarks, hub, skip_missing)
        index = index_from_pairs(pairs, n=n, min_words=min_words)
    except ValueError as e:
        raise _fail(str(e))
    if missing:
        typer.secho(f"warning: left out (no files): {', '.join(missing)}", fg=typer.colors.YELLOW, err=True)
    if against == "paper" and builtin is None:
        typer.secho("note: built-in held-out sets not included (pass --builtin CORPUS_DIR to add them)", fg=typer.colors.YELLOW, err=True)
    if len(index) == 0:
        raise _fail("no evaluation text to decontaminate against")
    from hrm_text.data.records import iter_source_files

    bar = tqdm(total=sum(f.stat().st_size for f in iter_source_files([src])), unit="B", unit_scale=True, desc="decontaminate")
    try:
        rep = decontaminate_dir(src, out, index, progress=bar.update)
    except (ValueError, OSError) as e:
        raise _fail(str(e))
    finally:
        bar.close()
    typer.echo(f"{rep['removed']:,} of {rep['rows']:,} rows removed ({len(index):,} evaluation n-grams) -> {out} "
               f"(report: {out}/decontamination.md)")


def register(app: typer.Typer) -> None:
    """Attach `data` to the root `hrm-text` command."""
    app.add_typer(data_app, name="data")
