"""``roadminer queue teach``: teacher labels for the hard-example queue (see ``roadminer.lifecycle.teacher``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from roadminer.state.commands import ConfigOpt, RedisOpt, _settings, _with_layer, queue_app


def register(app: typer.Typer) -> None:
    @queue_app.command("teach")
    def teach_cmd(
        config: ConfigOpt = None,
        redis_url: RedisOpt = None,
        models_dir: Annotated[Path | None, typer.Option("--models-dir", help="model registry")] = None,
        limit: Annotated[int | None, typer.Option(help="at most this many items, newest first")] = None,
    ) -> None:
        """Teacher labels (learning.teacher_tier: 'cascade' = every tier on every image, plus
        learning.teacher_tiers) for queued images without a human or simulator label, where the teacher
        is confident (learning.pseudo_margin). A later human label overrides them."""
        from roadminer.lifecycle.registry import ModelRegistry
        from roadminer.lifecycle.teacher import teach_queue

        settings = _settings(config, redis_url)
        if models_dir is not None:
            settings.learning.models_dir = str(models_dir)
        if not settings.learning.teacher_tier:
            typer.echo("error: learning.teacher_tier is null (no teacher); set 'cascade' or a tier name", err=True)
            raise typer.Exit(2)
        registry = ModelRegistry(settings.learning.models_dir)
        try:
            rep = asyncio.run(
                _with_layer(settings, lambda layer: teach_queue(settings, layer.queue, registry, limit=limit))
            )
        except ValueError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from e
        typer.echo(json.dumps(rep.to_json(), indent=2))
