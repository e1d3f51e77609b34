"""`hrm-text train`, `hrm-text plan` and `hrm-text quickstart`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from hrm_text.config import ConfigError, load_config


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def train_cmd(
    config: Optional[Path] = typer.Argument(None, help="YAML config (sections model/data/train/eval); optional."),
    overrides: Optional[list[str]] = typer.Argument(None, help="section.key=value overrides, e.g. model.preset=XL train.lr=3e-4"),
    resume: str = typer.Option("auto", help="'auto' (newest complete checkpoint in train.out_dir), a checkpoint path, or 'none'."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps (short runs)."),
    max_tokens: Optional[float] = typer.Option(None, "--max-tokens", help="Token budget instead of steps, e.g. 60e9."),
    resume_data: str = typer.Option("saved", "--resume-data", help="On resume: 'saved' continues the checkpoint's data position exactly (needs the same batch); 'fresh' restarts the data at the beginning of the checkpoint's epoch, for a resume after changing the batch."),
) -> None:
    """Train (or fine-tune) a model. Runs on CPU or one GPU; launch under `torchrun --nproc_per_node N`
    for FSDP2 on N GPUs. SIGTERM/SIGINT save a checkpoint and exit 0; rerun to resume."""
    _setup_logging()
    if resume_data not in ("saved", "fresh"):
        typer.secho(f"error: --resume-data {resume_data!r}: choose saved or fresh", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    over = list(overrides or [])
    # `hrm-text train model.preset=tiny ...` without a YAML: the first argument is an override
    if config is not None and "=" in str(config) and not config.is_file():
        over.insert(0, str(config))
        config = None
    if max_steps is not None:
        over.append(f"train.max_steps={max_steps}")
    if max_tokens is not None:
        over.append(f"train.max_tokens={max_tokens}")
    # lazy (here and in every command): keeps `hrm-text --help` from importing torch
    from hrm_text.eval.during_training import make_eval_fn
    from hrm_text.train.trainer import OutOfMemory, train

    try:
        cfg = load_config(config, over)
        eval_fn = make_eval_fn(cfg) if cfg.wants_eval_during_training() else None  # a missing held-out file fails here
        result = train(cfg, resume=None if resume.lower() == "none" else resume, resume_data=resume_data, eval_fn=eval_fn)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    except OutOfMemory as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    msg = "interrupted; " if result.interrupted else ""
    typer.echo(f"{msg}stopped at step {result.steps}; checkpoint: {result.final_checkpoint}")


def plan_cmd(
    preset: str = typer.Option("XL", help="Model preset: tiny, S, B, L, XL, XXL, XXL_wide."),
    tokens: float = typer.Option(60e9, help="Training tokens, e.g. 60e9."),
    gpus: int = typer.Option(16, help="Number of GPUs."),
    price: float = typer.Option(2.0, help="Price per GPU-hour in dollars."),
    gpu: str = typer.Option("H100", help="GPU kind: H100, H200, A100, B200."),
    tokens_per_rank: Optional[int] = typer.Option(None, help="Packed tokens per GPU per micro-step (memory estimate)."),
    fp8: bool = typer.Option(False, "--fp8", help="Use the float8 training throughput (train.fp8) where measured."),
) -> None:
    """Predict FLOPs, hours, dollars and per-GPU memory of a pretraining run."""
    from hrm_text.train.plan import plan

    try:
        res = plan(preset, tokens, gpus, price, gpu=gpu, tokens_per_rank=tokens_per_rank, fp8=fp8)
    except (ConfigError, ValueError, KeyError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    typer.echo(res.format())


def quickstart_cmd(
    out: Path = typer.Option(Path("hrm_quickstart"), help="Working folder (corpus, tokenizer, data, run)."),
    minutes: float = typer.Option(6.0, help="Training time budget in minutes."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda if available)."),
    seed: int = typer.Option(0, help="Seed for data and model."),
) -> None:
    """The whole pipeline on the built-in offline corpus: corpus -> tokenizer -> tokens -> sample ->
    train the tiny HRM -> held-out exact-match before and after, plus a few answers."""
    _setup_logging()
    from hrm_text.commands.quickstart import run_quickstart

    try:
        code = run_quickstart(out, minutes=minutes, device=device, seed=seed)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    ctx = {"allow_extra_args": False}
    app.command("train", context_settings=ctx)(train_cmd)
    app.command("plan")(plan_cmd)
    app.command("quickstart")(quickstart_cmd)
