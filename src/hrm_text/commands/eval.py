"""`hrm-text eval CKPT --suite paper|builtin`: run a suite on a checkpoint, write JSON + markdown.

What the command does, in order (so that cheap failures come before the expensive model load):
  1. load the tokenizer only, and build the suite's items (a missing benchmark file stops here with
     the exact files and layout expected, exit code 2, no traceback);
  2. load the model with its EMA weights (docs/ARCHITECTURE.md#optimiser-and-schedules: evaluation uses the EMA weights);
  3. greedy generation through the inference engine, one engine context at a time: each item carries
     the paper's context (3072, 4096 for multiple choice) and its own answer budget;
  4. score, write `<out>/results.json` and `<out>/results.md` (default out: RUN/eval/<step>-<suite>),
     print the table (builtin: one row per held-out file with the item-weighted and the unweighted
     group mean, both named).

`hrm-text lm-eval ...` runs lm-evaluation-harness's own CLI with our `hrm_text` backend registered
(see `hrm_text.eval.lm_eval_adapter`).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import typer

log = logging.getLogger(__name__)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _parse_dtype(name: str, device: str) -> Any:
    """`auto` is bfloat16 on GPU (what the model was trained in) and float32 on CPU (where bf16
    matmuls are slow and numerically different from the reference)."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise typer.BadParameter(f"--dtype {name!r}: choose auto, float32, bfloat16 or float16")
    return table[name]


def _echo_err(msg: str) -> None:
    typer.secho(msg, fg=typer.colors.RED, err=True)


def eval_cmd(
    ckpt: Path = typer.Argument(..., help="Checkpoint dir, run dir (newest checkpoint) or transformers hrm_text folder."),
    suite: str = typer.Option("paper", help="'paper' (the paper's eight benchmarks) or 'builtin' (held-out exact match)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="paper: folder of <benchmark>/ files (or EVAL_DATA_DIR). builtin: the corpus folder, if --corpus is not given."),
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="builtin: corpus folder (its heldout/ part), a folder of held-out files, or one file."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Items per benchmark (paper) or rows per file (builtin)."),
    only: Optional[str] = typer.Option(None, "--only", help="Comma-separated benchmarks or groups, e.g. gsm8k,mmlu."),
    batch_size: int = typer.Option(32, "--batch-size", help="Prompts per engine call (also the engine's batch rows)."),
    context: Optional[int] = typer.Option(None, "--context", help="Context for every item. Default: the paper's (3072; 4096 for multiple choice), capped by the model's max_seq_len."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Cap on each item's answer budget (paper: 2048 CoT, 64 DROP, 8 letter)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder for results.json and results.md (default: RUN/eval/<step>-<suite> next to the checkpoint; for a transformers folder, FOLDER/eval/<suite>)."),
    compare: Optional[list[str]] = typer.Option(None, "--compare", help="'paper', 'paper:all' or a results JSON (repeatable)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda if available)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Tokenizer folder, if the checkpoint stores none."),
    seed: int = typer.Option(1234, "--seed", help="Seed of the few-shot example draw (the paper suite)."),
    source: str = typer.Option("auto", "--source", help="paper data: auto (local files, else the Hub), local, hub."),
    no_ema: bool = typer.Option(False, "--no-ema", help="Use the raw weights instead of the EMA weights."),
) -> None:
    """Evaluate a checkpoint on the paper's benchmarks or the built-in held-out suite."""
    from hrm_text.eval.runner import MissingBenchmarkData, builtin_items, paper_items, run_suite
    from hrm_text.checkpoint.loading import ModelLoadError, load_tokenizer_only
    from hrm_text.eval.generation import SuiteGenerator

    logging.basicConfig(level=logging.WARNING)
    suite = suite.lower()
    if suite not in ("paper", "builtin"):
        raise typer.BadParameter(f"--suite {suite!r}: choose paper or builtin")
    if batch_size < 1:
        raise typer.BadParameter("--batch-size must be >= 1")
    dev = device or _default_device()
    torch_dtype = _parse_dtype(dtype, dev)
    t0 = time.time()
    try:
        tok = load_tokenizer_only(ckpt, tokenizer)
        count_tokens: Callable[[str], int] = lambda s: len(tok.encode(s)) + 4  # + <boq> <cond..> <eoq>
        if suite == "paper":
            items = paper_items(data_dir, limit=limit, seed=seed, source=source, count_tokens=count_tokens)
        else:
            where = corpus or data_dir
            if where is None:
                _echo_err("--suite builtin needs --corpus DIR (a corpus written by `hrm-text data builtin`, "
                          "its heldout/ part is used) or a folder/file of held-out JSONL.")
                raise typer.Exit(2)
            items = builtin_items(where, limit=limit)
        if not items:
            _echo_err("the suite has no items (empty files?)")
            raise typer.Exit(2)
        from hrm_text.checkpoint.loading import load_model

        loaded = load_model(ckpt, device=dev, dtype=torch_dtype, use_ema=not no_ema)
    except MissingBenchmarkData as e:
        _echo_err(str(e))
        raise typer.Exit(2)
    except (ModelLoadError, FileNotFoundError, ValueError) as e:
        _echo_err(f"error: {e}")
        raise typer.Exit(2)

    # one engine context at a time: sort by context (stable, so benchmark order is kept)
    gen = SuiteGenerator(loaded.model, tok, items, batch_size, context, max_new_tokens)
    items = sorted(items, key=lambda it: gen.plan[(it.condition, it.instruction)][0])
    bar = _progress()
    meta = {
        "command": "hrm-text eval " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["eval"] else sys.argv[1:]),
        "checkpoint": str(loaded.path), "weights": loaded.source, "suite": suite,
        "data_dir": str(data_dir) if data_dir else None, "corpus": str(corpus or data_dir) if suite == "builtin" else None,
        "seed": seed, "decoding": "greedy", "device": dev, "dtype": str(torch_dtype).replace("torch.", ""),
        "context": context if context is not None else "paper (3072; 4096 multiple choice)",
        "model_max_seq_len": gen.limit_ctx, "max_new_tokens_cap": max_new_tokens,
        "git_commit": _git_commit(),
    }
    try:
        import torch

        with torch.inference_mode():
            result = run_suite(items, gen, batch_size=batch_size, limit=limit if suite == "paper" else None,
                               only=only, progress=bar, meta=meta)
    except ValueError as e:  # e.g. --only naming nothing
        _echo_err(f"error: {e}")
        raise typer.Exit(2)
    result.meta["seconds"] = round(time.time() - t0, 1)
    from hrm_text.eval.report import builtin_split_table, load_reference, markdown_table, write_report

    out_dir = out or default_out_dir(loaded.path, loaded.source, suite)
    try:
        json_path, md_path = write_report(result, out_dir, compare=list(compare or []), groups=True)
        refs: dict[str, dict[str, float]] = {}
        for spec in compare or []:
            refs.update(load_reference(spec))
    except (FileNotFoundError, ValueError) as e:
        _echo_err(f"error: {e}")
        raise typer.Exit(2)
    if suite == "builtin" and not refs:
        typer.echo(builtin_split_table(result), nl=False)
    else:
        typer.echo(markdown_table(result, refs, groups=False), nl=False)
    typer.echo(f"wrote {json_path} and {md_path} ({result.meta['seconds']} s)")


def default_out_dir(model_path: Path, source: str, suite: str) -> Path:
    """Where results go without --out: beside the checkpoint in its run folder
    (`RUN/eval/step_000100-builtin`), or inside a transformers folder (`FOLDER/eval/builtin`),
    never the current directory, so two runs' results cannot overwrite each other."""
    if source.startswith("checkpoint"):
        return model_path.parent / "eval" / f"{model_path.name}-{suite}"
    return model_path / "eval" / suite


def _progress() -> Callable[[int, int], None]:
    """Progress on stderr (one line per engine call), so stdout stays the table."""

    def report(done: int, total: int) -> None:
        typer.echo(f"\r{done}/{total} items", err=True, nl=done >= total)

    return report


def _git_commit() -> Optional[str]:
    """The code version that produced the numbers, when run from a git checkout."""
    try:
        here = Path(__file__).resolve().parent
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return res.stdout.strip() or None if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def lm_eval_cmd(ctx: typer.Context) -> None:
    """Run lm-evaluation-harness's CLI with the `hrm_text` backend registered, e.g.
    `hrm-text lm-eval --model hrm_text --model_args ckpt=PATH --tasks arc_challenge`.
    Every argument is passed to `lm_eval` unchanged."""
    from hrm_text.eval.lm_eval_adapter import run_lm_eval_cli

    raise typer.Exit(run_lm_eval_cli(list(ctx.args)))


def study_cmd(
    grid: Path = typer.Argument(..., help="Grid YAML (see src/hrm_text/configs/study_*.yaml and docs/STUDIES.md)."),
    out: Path = typer.Option(..., "--out", help="Study folder: data/, runs/<run>/, results.json/.md, loss_curves.png, bars.png."),
    time_limit: Optional[float] = typer.Option(None, "--time-limit", help="Stop cleanly after this many minutes "
                                               "(checkpoint, exit code 75); rerun the same command to resume."),
    only: Optional[str] = typer.Option(None, "--only", help="Comma-separated run names to run (others are skipped)."),
    prepare_only: bool = typer.Option(False, "--prepare-only", help="Build the shared data and plan.json, train nothing."),
    scale_budgets: Optional[float] = typer.Option(None, "--scale-budgets", help="Multiply every FLOPs budget of the grid "
                                                  "(e.g. the scale benchmarks/study_steptime.py suggests)."),
    report_only: bool = typer.Option(False, "--report-only", help="Only rewrite results.json/md and the plots from "
                                     "the finished runs (e.g. after copying them from a GPU machine)."),
) -> None:
    """Train a grid of models at matched training FLOPs on one data order, evaluate each on the
    held-out splits, and write a results table with loss curves and a bar chart. Finished runs are
    skipped and an interrupted run resumes from its checkpoint, so the same command continues a grid."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from hrm_text.config import ConfigError
    from hrm_text.eval.study import EXIT_INCOMPLETE, run_study

    command = f"hrm-text study {grid} --out {out}" + (f" --time-limit {time_limit:g}" if time_limit else "") + (
        f" --only {only}" if only else "") + (f" --scale-budgets {scale_budgets:g}" if scale_budgets else "")
    try:
        code = run_study(grid, out, time_limit_s=time_limit * 60 if time_limit else None,
                         only=[x.strip() for x in only.split(",") if x.strip()] if only else None,
                         prepare_only=prepare_only, command=command, budget_scale=scale_budgets,
                         report_only=report_only)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    if code == EXIT_INCOMPLETE:
        typer.secho(f"stopped at the time limit; rerun the same command to resume: {command}", fg=typer.colors.YELLOW)
    elif report_only:
        typer.echo(f"report: {out / 'results.md'}")
    elif not prepare_only:
        typer.echo(f"done: {out / 'results.md'}, {out / 'loss_curves.png'}, {out / 'bars.png'}")
    else:
        typer.echo(f"data ready under {out / 'data'}; planned runs in {out / 'plan.json'}")
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command("study")(study_cmd)
    app.command("lm-eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                              "help_option_names": []})(lm_eval_cmd)
