"""Labels of hard examples, with provenance, kept durably in the state store.

A validator never tells a miner whether an answer was right, so the hard-example queue only becomes
training data when someone labels it: a **human** (the dashboard's labelling page or
``roadminer queue label``), the **teacher** (the full cascade, confident answers only; see
``roadminer.lifecycle.teacher``) or the **simulator** (a local validator that knows its challenge labels).

Every labelling action is one event appended to a per-image log (``labels:log:<image sha256>``, newest
first, no expiry): value, provenance, who, when, and the teacher's probability where there is one. The
label that counts is computed from the log, so it is an audit trail as well:

* provenances rank ``human`` > ``simulator`` > ``teacher``: the latest event of the highest-ranked
  provenance present wins, so a human label overrides a teacher label whenever it was given, and a
  later teacher run never overrides a human;
* ``skip`` is a human decision that the image should not train (unclear, broken, not a street): it
  hides any teacher label;
* ``undo`` removes the latest human event (the keyboard's U);
* labelling an image again with the value its provenance already holds appends nothing (idempotent).

With Redis and ``appendonly yes`` the logs survive a restart (``tests/unit`` restarts a real server).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from roadminer.state.store import StateStore, dumps

LOG_PREFIX = "labels:log:"
INDEX_KEY = "labels:index"
MAX_EVENTS = 200  # per image; older events fall off the log


class Provenance(StrEnum):
    HUMAN = "human"
    SIMULATOR = "simulator"
    TEACHER = "teacher"


RANK = {Provenance.TEACHER: 1, Provenance.SIMULATOR: 2, Provenance.HUMAN: 3}
VALUES = ("roadwork", "no_roadwork", "skip")
UNDO = "undo"


class LabelError(ValueError):
    """A label value, provenance or image id the store cannot accept."""


def label_value(label: int | str) -> str:
    """0/1, ``roadwork``/``no_roadwork``/``skip`` (and a few spellings) -> the stored value."""
    if isinstance(label, bool):
        label = int(label)
    if isinstance(label, int):
        if label in (0, 1):
            return "roadwork" if label else "no_roadwork"
        raise LabelError(f"label must be 0 or 1, got {label!r}")
    v = str(label).strip().lower().replace("-", "_")
    aliases = {"r": "roadwork", "1": "roadwork", "n": "no_roadwork", "none": "no_roadwork", "0": "no_roadwork",
               "s": "skip"}
    v = aliases.get(v, v)
    if v not in VALUES:
        raise LabelError(f"label must be one of {', '.join(VALUES)}, got {label!r}")
    return v


def check_image_id(image_hash: str) -> str:
    h = str(image_hash).strip().lower()
    if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
        raise LabelError(f"an image id is the 64-hex sha256 of the image, got {image_hash!r:.80}")
    return h


@dataclass(frozen=True)
class LabelEvent:
    value: str  # roadwork | no_roadwork | skip | undo
    provenance: str  # human | simulator | teacher
    who: str = ""  # labeller name, teacher version, simulator hotkey
    t: float = 0.0
    prob: float | None = None  # the teacher's P(roadwork)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_raw(cls, raw: bytes) -> LabelEvent | None:
        """A log entry, or None when it is not one (never raises on foreign bytes)."""
        try:
            d = json.loads(raw)
            value = str(d["value"])
            prov = str(d["provenance"])
            if value not in (*VALUES, UNDO) or prov not in RANK:
                return None
            prob = d.get("prob")
            return cls(value, prov, str(d.get("who", ""))[:200], float(d.get("t", 0.0)),
                       None if prob is None else float(prob))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


@dataclass(frozen=True)
class Label:
    """The label that counts for one image, and where it came from."""

    image_hash: str
    value: str  # roadwork | no_roadwork | skip
    provenance: str
    who: str
    t: float
    prob: float | None = None
    events: int = 0  # events in the log (all provenances, undos included)

    @property
    def target(self) -> int | None:
        """1 / 0 for training, None for ``skip``."""
        return {"roadwork": 1, "no_roadwork": 0}.get(self.value)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def resolve(image_hash: str, events_oldest_first: Iterable[LabelEvent]) -> Label | None:
    """Replay a log: per provenance a stack of events (``undo`` pops the human one); the top of the
    highest-ranked non-empty stack is the label."""
    stacks: dict[str, list[LabelEvent]] = {p: [] for p in RANK}
    n = 0
    for e in events_oldest_first:
        n += 1
        if e.value == UNDO:
            if stacks[e.provenance]:
                stacks[e.provenance].pop()
        else:
            stacks[e.provenance].append(e)
    for prov in sorted(RANK, key=lambda p: -RANK[p]):
        if stacks[prov]:
            top = stacks[prov][-1]
            return Label(image_hash, top.value, top.provenance, top.who, top.t, top.prob, n)
    return None


@dataclass(frozen=True)
class LabelChange:
    label: Label | None  # what counts after the action
    changed: bool  # False: the action repeated what the log already held (or nothing to undo)


class LabelStore:
    """Append-only label logs per image (see the module docstring for the rules)."""

    def __init__(self, store: StateStore, max_events: int = MAX_EVENTS) -> None:
        self.store = store
        self.max_events = max_events

    async def events(self, image_hash: str) -> list[LabelEvent]:
        """The log, oldest first."""
        raw = await self.store.list_range(LOG_PREFIX + check_image_id(image_hash))
        return [e for e in (LabelEvent.from_raw(r) for r in reversed(raw)) if e is not None]

    async def get(self, image_hash: str) -> Label | None:
        h = check_image_id(image_hash)
        return resolve(h, await self.events(h))

    async def get_many(self, image_hashes: Iterable[str]) -> dict[str, Label]:
        out: dict[str, Label] = {}
        for h in image_hashes:
            lab = await self.get(h)
            if lab is not None:
                out[h] = lab
        return out

    async def _append(self, image_hash: str, event: LabelEvent) -> None:
        await self.store.list_push(LOG_PREFIX + image_hash, dumps(event.to_json()), self.max_events)
        await self.store.sadd(INDEX_KEY, image_hash)

    async def set(
        self,
        image_hash: str,
        label: int | str,
        provenance: str | Provenance = Provenance.HUMAN,
        who: str = "",
        prob: float | None = None,
        t: float | None = None,
    ) -> LabelChange:
        """Record one label. A repeat of the value that provenance already holds is not appended."""
        h = check_image_id(image_hash)
        value = label_value(label)
        prov = str(provenance)
        if prov not in RANK:
            raise LabelError(f"provenance must be one of {', '.join(RANK)}, got {provenance!r}")
        if value == "skip" and prov != Provenance.HUMAN:
            raise LabelError("only a human can skip an image")
        events = await self.events(h)
        same_prov = resolve(h, [e for e in events if e.provenance == prov])
        if same_prov is not None and same_prov.value == value:
            return LabelChange(resolve(h, events), False)
        event = LabelEvent(value, prov, str(who)[:200], time.time() if t is None else float(t),
                           None if prob is None else float(prob))
        await self._append(h, event)
        return LabelChange(resolve(h, [*events, event]), True)

    async def undo(self, image_hash: str, who: str = "") -> LabelChange:
        """Remove the latest human label of this image (no-op when there is none)."""
        h = check_image_id(image_hash)
        events = await self.events(h)
        if resolve(h, [e for e in events if e.provenance == Provenance.HUMAN]) is None:
            return LabelChange(resolve(h, events), False)
        event = LabelEvent(UNDO, Provenance.HUMAN, str(who)[:200], time.time())
        await self._append(h, event)
        return LabelChange(resolve(h, [*events, event]), True)

    async def labelled_ids(self) -> set[str]:
        """Every image with a label event (including ones whose label was undone)."""
        return await self.store.smembers(INDEX_KEY)

    async def counts(self, image_hashes: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
        """``{provenance: {value: n}}`` over the given images (default: every labelled image)."""
        ids = list(image_hashes) if image_hashes is not None else sorted(await self.labelled_ids())
        out: dict[str, dict[str, int]] = {}
        for lab in (await self.get_many(ids)).values():
            out.setdefault(lab.provenance, {}).setdefault(lab.value, 0)
            out[lab.provenance][lab.value] += 1
        return out


def provenance_weight(label: Label, weights: Mapping[str, float]) -> float:
    """The training weight of a label (``learning.provenance_weights``); 0 for ``skip``."""
    if label.target is None:
        return 0.0
    return float(weights.get(label.provenance, 1.0))
