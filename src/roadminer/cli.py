"""``roadminer`` command line. Each feature area registers its own commands (``register(app)``) so
that modules stay small and imports stay lazy: heavy libraries load only inside the command that needs
them."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer

from roadminer.core.logging_setup import setup_logging


class _App(typer.Typer):
    """The typer app; a configuration that does not load ends the command with its reasons and exit
    status 2 rather than a traceback."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from roadminer.core.config import ConfigError

        try:
            return super().__call__(*args, **kwargs)
        except ConfigError as e:
            typer.echo(f"error: {e}", err=True)
            raise SystemExit(2) from None


app = _App(
    name="roadminer",
    help="Miner and validator node for a roadwork-detection subnet (SN72).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Modules that define ``register(app: typer.Typer) -> None``, each with the commands its comment names.
COMMAND_MODULES = (
    "roadminer.miner.commands",  # miner
    "roadminer.miner.demo",  # demo (miner + simulator in one command)
    "roadminer.validator.commands",  # simulate, validator
    "roadminer.training.commands",  # train
    "roadminer.training.detector_commands",  # train-detector
    "roadminer.training.recipe_commands",  # train-recipe, export-data
    "roadminer.cascade.commands",  # eval, cascade-fit, cascade-stack
    "roadminer.lifecycle.commands",  # promote, distill, learn, models
    "roadminer.state.commands",  # queue
    "roadminer.lifecycle.teacher_commands",  # queue teach
    "roadminer.bench.commands",  # bench
    "roadminer.dashboard.commands",  # dashboard
    "roadminer.deploy.commands",  # plan
    "roadminer.core.commands",  # config show
)


@app.callback()
def _root(
    log_level: str = typer.Option("INFO", "--log-level", envvar="ROADMINER_LOG_LEVEL", help="loguru level"),
) -> None:
    setup_logging(log_level)


@app.command()
def version() -> None:
    """Print the roadminer version."""
    from roadminer import __version__

    typer.echo(__version__)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


_register_all()


def main() -> None:
    app(prog_name="roadminer")


if __name__ == "__main__":
    sys.exit(main())
