"""`hrm-text model-info`: parameter counts and the paper's FLOPs accounting for a config."""

from __future__ import annotations

from typing import Optional

import typer

from hrm_text.config import PRESETS, ConfigError, TrainConfig, model_config


def model_info_cmd(
    preset: str = typer.Option("XL", help=f"Preset: {', '.join(PRESETS)}."),
    arch: str = typer.Option("hrm", help="hrm, transformer, looped, trm or rins."),
    vocab_size: Optional[int] = typer.Option(None, help="Override the vocabulary size."),
    tokens: float = typer.Option(60e9, help="Training tokens for the total-FLOPs line."),
) -> None:
    """Print parameters (total, non-embedding), stack calls and training FLOPs per token for K=2..5."""
    from hrm_text.model.flops import count_params, forward_flops_per_token, run_flops, train_flops_per_token
    from hrm_text.model.schedule import build_schedule

    try:
        extra = {} if vocab_size is None else {"vocab_size": vocab_size}
        cfg = model_config(preset, arch=arch, **extra)
    except ConfigError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    sched = build_schedule(cfg)
    typer.echo(f"{preset} ({arch}): {count_params(cfg)}")
    typer.echo(f"  hidden {cfg.hidden_size}, heads {cfg.num_heads} x {cfg.head_dim}, intermediate {cfg.intermediate_size}, "
               f"stacks {dict(sched.stacks)}, {len(sched.calls)} stack calls per token: {' '.join(c.kind.value for c in sched.calls)}")
    typer.echo(f"  forward FLOPs/token: {forward_flops_per_token(cfg):.3e}")
    t = TrainConfig()  # the paper's K schedule (train.bp_*)
    ks = range(t.bp_min_steps, t.bp_max_steps + 1) if arch in ("hrm", "trm") else [t.final_bp_steps(arch)]
    for K in ks:
        typer.echo(f"  training FLOPs/token at K={K}: {train_flops_per_token(cfg, K):.3e}")
    typer.echo(f"  training FLOPs for {tokens:.3g} tokens (K warm-up included): {run_flops(cfg, tokens, t):.3e}")


def register(app: typer.Typer) -> None:
    app.command("model-info")(model_info_cmd)
