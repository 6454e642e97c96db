"""The model timeline: ``loaded`` (start, hot reload), ``promoted`` and ``rejected`` events in the state
store's ``models:events`` list, read back by the dashboard."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from loguru import logger

from roadminer.state.layer import StateLayer
from roadminer.state.store import StateStore, dumps

MODEL_EVENTS_KEY = "models:events"
MODEL_EVENTS_MAX = 1000


async def record_model_event(
    store: StateStore, version: str, event: str = "loaded", t: float | None = None, **info: Any
) -> None:
    """Note a model event for the timeline: ``loaded`` (hot reload / start), ``promoted``, ``rejected``.
    ``info`` holds JSON-able extras (metrics of the promotion gate, tier name)."""
    entry = {
        "t": time.time() if t is None else float(t),
        "version": str(version),
        "event": str(event),
        **info,
    }
    await store.list_push(MODEL_EVENTS_KEY, dumps(entry), MODEL_EVENTS_MAX)


async def model_events(store: StateStore, since: float | None = None) -> list[dict[str, Any]]:
    rows = []
    for raw in await store.list_range(MODEL_EVENTS_KEY):
        try:
            e = json.loads(raw)
            float(e["t"])
        except (ValueError, KeyError, TypeError):
            continue
        rows.append(e)
    rows.sort(key=lambda e: float(e["t"]))
    if since is not None:
        # Keep the version that was current at the start of the window.
        before = [e for e in rows if float(e["t"]) < since and e.get("event") in ("loaded", "promoted")]
        rows = before[-1:] + [e for e in rows if float(e["t"]) >= since]
    return rows


async def note_model_event(state: StateLayer | None, version: str, event: str, **info: Any) -> None:
    """Add a model event to the dashboard's timeline; never raises, never waits long."""
    if state is None:
        return
    try:
        await asyncio.wait_for(record_model_event(state.store, version, event, **info), 2.0)
    except Exception as e:
        logger.warning("could not record model event {} {}: {!r}", event, version, e)
