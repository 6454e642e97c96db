"""``python -m roadminer.bench [--device ...]``: the bench command alone (for hosts that lack the
miner's other dependencies)."""

from __future__ import annotations

import typer

from roadminer.bench.commands import register
from roadminer.core.logging_setup import setup_logging

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
register(app)

if __name__ == "__main__":
    setup_logging("INFO")
    app()
