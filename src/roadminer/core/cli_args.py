"""Command-line values every command reads the same way: ``--set key=value`` overrides (values in YAML,
so ``0.1``, ``true``, ``[0, 1]`` and bare strings all work) and durations (``90s``, ``30m``, ``6h``,
``7d`` or plain seconds)."""

from __future__ import annotations

import re
from typing import Any

import typer
import yaml

DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")


def parse_sets(items: list[str] | None, option: str = "--set") -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}``; a value that is not YAML stays a string."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{option} expects key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def parse_duration(text: str) -> float:
    """``"6h"``, ``"30m"``, ``"90s"``, ``"7d"`` or ``"3600"`` -> seconds (``ValueError`` otherwise)."""
    m = _DURATION.fullmatch(text.lower())
    if not m:
        raise ValueError(f"cannot read duration {text[:40]!r} (e.g. 90s, 30m, 6h, 7d or seconds)")
    return float(m.group(1)) * DURATION_UNITS[m.group(2)]


def parse_levels(text: str) -> list[int]:
    """``"0,1,2,3"`` -> validator augmentation levels (each 0-3)."""
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"levels must be comma-separated integers, got {text!r}") from None
    if not levels or any(lv not in (0, 1, 2, 3) for lv in levels):
        raise typer.BadParameter("levels must be among 0,1,2,3")
    return levels


def jsonable(obj: Any) -> Any:
    """A report made printable as JSON: numpy scalars to Python, arrays left out."""
    import numpy as np

    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items() if not isinstance(v, np.ndarray)}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
