"""``roadminer queue list|label|undo``: the labelling work list from the command line.

The contract scripts rely on::

    roadminer queue list --json [--redis-url U]          JSON list: id, reason, probability, labelled, ...
    roadminer queue label ID roadwork|no_roadwork|skip [--redis-url U]
    roadminer queue export --labelled --out DIR [--redis-url U]   (in roadminer.state.commands)

Exit codes: 0 done, 2 bad input or unreachable state (the message says which), 1 nothing to undo.
"""

from __future__ import annotations

import asyncio
import getpass
import json
from pathlib import Path
from typing import Annotated, Any

import typer

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file")]
RedisOpt = Annotated[
    str | None, typer.Option("--redis-url", help="use this Redis (sets state.backend=redis)")
]
WhoOpt = Annotated[str | None, typer.Option("--who", help="labeller name recorded with the label (default: $USER)")]


def _who(who: str | None) -> str:
    if who:
        return who
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "cli"


def add_label_commands(queue_app: typer.Typer) -> None:
    from roadminer.state.commands import _settings, _with_layer

    def run(settings: Any, fn: Any) -> Any:
        from roadminer.state.labels import LabelError

        try:
            return asyncio.run(_with_layer(settings, fn))
        except LabelError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from e

    @queue_app.command("list")
    def list_cmd(
        as_json: Annotated[bool, typer.Option("--json", help="print a JSON list (the scripting format)")] = False,
        status: Annotated[
            str,
            typer.Option(help="all | unlabelled | needs_human | labelled | human | teacher | simulator | skipped"),
        ] = "all",
        limit: Annotated[int | None, typer.Option(help="at most this many items, newest first")] = None,
        config: ConfigOpt = None,
        redis_url: RedisOpt = None,
    ) -> None:
        """Queued hard examples with their labels (newest first)."""
        from roadminer.state.labelling import list_items

        settings = _settings(config, redis_url)
        items = run(settings, lambda layer: list_items(layer.queue, status, limit))
        if as_json:
            typer.echo(json.dumps([i.to_json() for i in items], indent=2))
            return
        for i in items:
            lab = f"{i.label} ({i.provenance}{', ' + i.labelled_by if i.labelled_by else ''})" if i.labelled else "-"
            typer.echo(f"{i.id[:16]}  p={i.probability:.3f}  {i.reason:<28}  {lab}")
        typer.echo(f"{len(items)} items", err=True)

    @queue_app.command("label")
    def label_cmd(
        item_id: Annotated[str, typer.Argument(metavar="ID", help="item id (image sha256, or a unique prefix)")],
        value: Annotated[str, typer.Argument(metavar="roadwork|no_roadwork|skip")],
        who: WhoOpt = None,
        config: ConfigOpt = None,
        redis_url: RedisOpt = None,
    ) -> None:
        """A human label for one queued item; labelling again with the same value changes nothing."""
        from roadminer.state.labelling import label_item
        from roadminer.state.labels import VALUES

        if value not in VALUES:
            typer.echo(f"error: label must be one of {', '.join(VALUES)}, got {value!r}", err=True)
            raise typer.Exit(2)
        settings = _settings(config, redis_url)
        item, changed = run(settings, lambda layer: label_item(layer.queue, item_id, value, _who(who)))
        typer.echo(json.dumps({**item.to_json(), "changed": changed}))

    @queue_app.command("undo")
    def undo_cmd(
        item_id: Annotated[str, typer.Argument(metavar="ID")],
        who: WhoOpt = None,
        config: ConfigOpt = None,
        redis_url: RedisOpt = None,
    ) -> None:
        """Undo the latest human label of one item (exit 1 when it has none)."""
        from roadminer.state.labelling import undo_item

        settings = _settings(config, redis_url)
        item, changed = run(settings, lambda layer: undo_item(layer.queue, item_id, _who(who)))
        typer.echo(json.dumps({**item.to_json(), "changed": changed}))
        if not changed:
            raise typer.Exit(1)
