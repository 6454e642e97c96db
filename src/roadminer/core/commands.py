"""``roadminer config show``: the effective configuration, one line per value, with the layer it came from
(``default``, ``yaml:FILE``, ``env:VAR`` or ``cli``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from roadminer.core.config_layers import SettingsLayers, dotted

config_app = typer.Typer(help="The effective configuration and where each value comes from.", no_args_is_help=True)
DEFAULT_CONFIG = Path("configs/miner.yaml")


def effective_values(settings: Any, layers: SettingsLayers) -> list[tuple[str, Any, str]]:
    """``(dotted key, value, layer)`` for every leaf of the settings; tier options are listed in full (the
    typed options' defaults included)."""
    from roadminer.core.tier_options import PLAN_HINTS, validate_tier_options

    data = settings.model_dump(mode="json", fallback=repr)
    for i, tier in enumerate(settings.cascade.tiers):
        typed = validate_tier_options(tier.kind, tier.options)
        shown = typed.model_dump(mode="json", fallback=repr)
        # planner hints only when set (most tiers give none)
        data["cascade"]["tiers"][i]["options"] = {
            k: v for k, v in shown.items() if v is not None or k not in PLAN_HINTS | typed.plan_only}
    rows: list[tuple[str, Any, str]] = []

    def walk(node: Any, path: tuple[str | int, ...]) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, (*path, key))
        elif isinstance(node, list) and node and all(isinstance(x, dict) for x in node):
            for i, value in enumerate(node):
                walk(value, (*path, i))
        else:
            rows.append((dotted(path), node, layers.label_of(path)))

    walk(data, ())
    return rows


def _selected(key: str, prefixes: list[str]) -> bool:
    return not prefixes or any(key == p or key.startswith((p + ".", p + "[")) for p in prefixes)


def render(rows: list[tuple[str, Any, str]]) -> str:
    cells = [(f"{key} = {json.dumps(value, ensure_ascii=False)}", source) for key, value, source in rows]
    width = min(max((len(c) for c, _ in cells), default=0), 88)
    return "\n".join(f"{c.ljust(width)}  # {source}" for c, source in cells)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")


@config_app.command("show")
def show(
    keys: Annotated[list[str] | None, typer.Argument(help="only these keys or sections, e.g. server cascade.tiers")
                    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (default: configs/miner.yaml "
                                                "when present, as for the miner)")] = None,
    no_config: Annotated[bool, typer.Option("--no-config", help="no YAML file: defaults and environment")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="dotted override, e.g. --set server.port=8092")
                    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON: {key: {value, source}}")] = False,
) -> None:
    """Print every effective setting and its layer: default, yaml:FILE, env:VAR or cli (CLI > env > YAML >
    defaults). Exit 2 with the reasons when the configuration does not load."""
    from roadminer.core.cli_args import parse_sets
    from roadminer.core.config import ConfigError, resolve_settings

    cfg_file = None if no_config else config if config is not None else (
        DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    try:
        settings, layers = resolve_settings(cfg_file, parse_sets(set_))
    except (ConfigError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    rows = [r for r in effective_values(settings, layers) if _selected(r[0], keys or [])]
    if keys and not rows:
        typer.echo(f"error: no setting matches {' '.join(keys)}", err=True)
        raise typer.Exit(2)
    if as_json:
        out = {"config_file": str(cfg_file) if cfg_file else None,
               "values": {k: {"value": v, "source": s} for k, v, s in rows}}
        typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    typer.echo(f"# precedence: cli > env (ROADMINER_*) > yaml:{cfg_file if cfg_file else '(no file)'} > default")
    typer.echo(render(rows))
