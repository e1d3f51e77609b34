"""`hrm-text rl CONFIG`: GRPO post-training (docs/POST_TRAINING.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def rl_cmd(
    config: Optional[Path] = typer.Argument(None, help="YAML config with an `rl` section (and train.init_from, train.max_steps...)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="section.key=value overrides, e.g. rl.group_size=8 train.lora.rank=16"),
    resume: str = typer.Option("auto", help="'auto' (newest complete checkpoint in train.out_dir), a checkpoint path, or 'none'."),
) -> None:
    """GRPO on verifiable rewards: group rollouts from our engine (PrefixLM prompt), group-normalised
    advantages, response-only loss, optional KL to the starting weights; LoRA or full weights.
    Checkpoints and exact resume as `train`; metrics in train.out_dir/metrics.jsonl and TensorBoard."""
    import logging

    from hrm_text.config import ConfigError, load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    over = list(overrides or [])
    if config is not None and "=" in str(config) and not config.is_file():
        over.insert(0, str(config))
        config = None
    try:
        cfg = load_config(config, over)
        from hrm_text.post.grpo import run_grpo

        res = run_grpo(cfg, resume=None if resume.lower() == "none" else resume)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    last = f"; last mean reward {res.rewards[-1]:.3f}" if res.rewards else ""
    typer.echo(f"stopped at step {res.steps}{last}; checkpoint: {res.final_checkpoint}")


def register(app: typer.Typer) -> None:
    app.command("rl")(rl_cmd)
