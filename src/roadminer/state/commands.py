"""``roadminer queue stats|export``: look at and export the hard-example queue."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

queue_app = typer.Typer(help="Hard-example queue (stats, export for training).", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file")]
RedisOpt = Annotated[
    str | None, typer.Option("--redis-url", help="use this Redis (sets state.backend=redis)")
]


def _settings(config: Path | None, redis_url: str | None) -> Any:
    from roadminer.core.config import load_settings

    overrides: dict[str, Any] = {}
    if redis_url:
        overrides = {"state.backend": "redis", "state.redis_url": redis_url}
    try:
        return load_settings(config, overrides)
    except (OSError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e


async def _with_layer(settings: Any, fn: Any) -> Any:
    from roadminer.state.backends.redis_store import RedisStore
    from roadminer.state.layer import StateLayer
    from roadminer.state.store import build_store

    cfg = settings.state
    # A command run against an unreachable Redis should say so, not read an empty in-memory fallback.
    store = (
        RedisStore(cfg.redis_url, prefix=cfg.key_prefix, socket_timeout=cfg.redis_socket_timeout_s)
        if cfg.backend == "redis"
        else build_store(cfg)
    )
    if not await store.ping():
        await store.close()
        typer.echo(f"error: state backend {cfg.backend} at {cfg.redis_url} does not answer", err=True)
        raise typer.Exit(2)
    layer = StateLayer.from_config(cfg, store=store)
    try:
        return await fn(layer)
    finally:
        await layer.close()


@queue_app.command("stats")
def stats(config: ConfigOpt = None, redis_url: RedisOpt = None) -> None:
    """Entries, pending/undelivered counts, reasons and labels, as JSON."""
    settings = _settings(config, redis_url)
    if settings.state.backend == "memory":
        typer.echo("note: state.backend is memory; a separate process sees an empty queue", err=True)
    out = asyncio.run(_with_layer(settings, lambda layer: layer.queue.stats()))
    typer.echo(json.dumps(out, indent=2))


@queue_app.command("export")
def export(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="folder for roadwork/ no_roadwork/ unlabeled/ + CSV")
    ],
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    consume: Annotated[
        bool,
        typer.Option("--consume", help="read through the consumer group and acknowledge what was written"),
    ] = False,
    consumer: Annotated[str, typer.Option(help="consumer name when --consume")] = "export",
    limit: Annotated[int | None, typer.Option(help="at most this many entries")] = None,
    labelled: Annotated[
        bool,
        typer.Option(
            "--labelled", help="only labelled images: roadwork/ no_roadwork/ + manifest.csv with provenance"
        ),
    ] = False,
) -> None:
    """Write the queued images into class folders with a manifest.csv (the training data layout; its
    provenance column says who labelled each image: human, teacher or simulator)."""
    settings = _settings(config, redis_url)
    weights = dict(settings.learning.provenance_weights)
    rep = asyncio.run(
        _with_layer(
            settings,
            lambda layer: layer.queue.export(
                out, consume=consume, consumer=consumer, limit=limit, labelled_only=labelled, weights=weights
            ),
        )
    )
    typer.echo(json.dumps(rep.to_json(), indent=2))


def register(app: typer.Typer) -> None:
    from roadminer.state.label_commands import add_label_commands

    add_label_commands(queue_app)
    app.add_typer(queue_app, name="queue")
