"""The `hrm-text` command. Each package registers its own sub-commands through `register(app)`.

Sub-command modules (imported only if present, so each area stays in its own room):
  hrm_text.model.cli   `model-info`
  hrm_text.data.cli    `data builtin|tokenizer|tokenize|sample|recipe|download|convert|decontaminate`
  hrm_text.train.cli   `train`, `plan`, `quickstart`
  hrm_text.infer.cli   `generate`, `chat`, `serve`, `export-hf`, `import-hf`
  hrm_text.eval.cli    `eval`
  hrm_text.post.cli    `rl`
"""

from __future__ import annotations

import importlib
import importlib.util
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
    "hrm_text.model.cli",
    "hrm_text.data.cli",
    "hrm_text.train.cli",
    "hrm_text.infer.cli",
    "hrm_text.eval.cli",
    "hrm_text.post.cli",
)


@app.callback()
def _root() -> None:
    """hrm-text: run `hrm-text quickstart` for a first end-to-end run on the built-in corpus."""


def _register_all() -> None:
    for name in _SUBCOMMAND_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(name)
        module.register(app)


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
