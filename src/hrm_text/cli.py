"""The `hrm-text` command: the top floor. Each module of `hrm_text.commands` registers its
sub-commands through `register(app)`; the components below never import a command module.

  hrm_text.commands.model   `model-info`
  hrm_text.commands.data    `data builtin|tokenizer|tokenize|sample|recipe|download|convert|decontaminate`
  hrm_text.commands.train   `train`, `plan`, `quickstart` (commands/quickstart.py)
  hrm_text.commands.infer   `generate`, `chat`, `serve`, `export-hf`, `import-hf`
  hrm_text.commands.eval    `eval`, `lm-eval`, `study`
  hrm_text.commands.post    `rl`
"""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="hrm-text",
    help="Pretrain, evaluate, chat with and serve HRM-Text (Hierarchical Recurrent Model) language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_SUBCOMMAND_MODULES = (
    "hrm_text.commands.model",
    "hrm_text.commands.data",
    "hrm_text.commands.train",
    "hrm_text.commands.infer",
    "hrm_text.commands.eval",
    "hrm_text.commands.post",
)


@app.callback()
def _root() -> None:
    """hrm-text: run `hrm-text quickstart` for a first end-to-end run on the built-in corpus."""


def _register_all() -> None:
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).register(app)


_register_all()


def main() -> None:
    from hrm_text.config import ConfigError

    try:
        app()
    except ConfigError as e:
        typer.secho(f"config error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
