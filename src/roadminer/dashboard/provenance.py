"""Real versus replayed history in a state store.

``roadminer dashboard --replay`` writes challenges it answered itself, at invented past timestamps, into the
same series the miner fills from validator traffic. So that nobody mistakes one for the other:

- every record the replay writes carries ``source: "replay"`` (history points, outcome rows, session records,
  hard-example entries, the model event), and each run is listed under ``replay:runs``;
- the live writers (``MetricHistory.add``, ``SessionStore.record``) mark the store once with the kind of
  record they wrote (``provenance:live``);
- the replay refuses a store that already holds live history unless forced (:func:`live_history`).

A store written before these marks existed holds history of unknown origin; it counts as live until a
forced replay notes it as such.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from roadminer.state.history import LIVE_MARKER_KEY
from roadminer.state.store import StateStore, dumps

REPLAY_RUNS_KEY = "replay:runs"
REPLAY_RUNS_MAX = 100


@dataclass
class LiveHistory:
    """What live (non-replayed) data a store holds."""

    markers: set[str] = field(default_factory=set)  # kinds of live records the writers marked
    legacy: bool = False  # history or sessions of unknown origin (no marks, no replay runs)
    series: list[str] = field(default_factory=list)
    session_validators: int = 0

    @property
    def present(self) -> bool:
        return bool(self.markers) or self.legacy

    def describe(self) -> str:
        what = sorted(self.markers) + (["unmarked history from before provenance marks"] if self.legacy else [])
        return f"live {', '.join(what)}; {len(self.series)} series, {self.session_validators} validators' sessions"


async def live_history(store: StateStore) -> LiveHistory:
    markers = {str(m) for m in await store.smembers(LIVE_MARKER_KEY)}
    names = sorted(str(n) for n in await store.smembers("hist:names"))
    sessions = await store.smembers("session:validators")
    runs = await store.list_range(REPLAY_RUNS_KEY, 0, 0)
    legacy = bool(names or sessions) and not runs and not markers
    return LiveHistory(markers, legacy, names, len(sessions))


async def mark_live(store: StateStore, kind: str) -> None:
    """Note live data of ``kind`` by hand (a forced replay over unmarked history keeps it detectable)."""
    await store.sadd(LIVE_MARKER_KEY, kind)


async def note_replay_run(store: StateStore, **info: Any) -> dict[str, Any]:
    entry = {"t": time.time(), **info}
    await store.list_push(REPLAY_RUNS_KEY, dumps(entry), REPLAY_RUNS_MAX)
    return entry


async def replay_runs(store: StateStore) -> list[dict[str, Any]]:
    """The replay runs recorded in the store, newest first."""
    out = []
    for raw in await store.list_range(REPLAY_RUNS_KEY):
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out
