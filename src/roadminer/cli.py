"""``roadminer`` command line. Each feature area registers its own commands (``register(app)``) so
that modules stay small and imports stay lazy: heavy libraries load only inside the command that needs
them."""

from __future__ import annotations

import importlib
import sys

import typer

from roadminer.core.logging_setup import setup_logging

app = typer.Typer(
    name="roadminer",
    help="Miner and validator node for a roadwork-detection subnet (SN72).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Modules that define ``register(app: typer.Typer) -> None``. A missing optional module is skipped.
COMMAND_MODULES = (
    "roadminer.miner.commands",  # miner
    "roadminer.validator.commands",  # simulate, validator
    "roadminer.training.commands",  # train, eval, distill, promote, learn
    "roadminer.state.commands",  # queue
    "roadminer.bench.commands",  # bench
    "roadminer.dashboard.commands",  # dashboard
    "roadminer.deploy.commands",  # plan
    "roadminer.miner.demo",  # demo (miner + simulator in one command)
    "roadminer.cascade.commands",  # cascade-fit
    "roadminer.lifecycle.commands",  # promote, distill, learn, models
    "roadminer.training.detector_commands",  # train-detector
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
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name or (e.name and name.startswith(e.name)):
                continue  # feature area not present in this build
            raise
        mod.register(app)


_register_all()


def main() -> None:
    app(prog_name="roadminer")


if __name__ == "__main__":
    sys.exit(main())
