"""The hard-example queue as a labelling work list: what the dashboard's labelling page and
``roadminer queue list|label`` show and do.

An item's ``id`` is the sha256 of its image (what the queue stores it under), so it is stable across
re-queueing and the same in the page, the CLI and the exported file names. Commands accept a unique
prefix of at least 8 hex digits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from roadminer.state.labels import Label, LabelChange, LabelError, Provenance
from roadminer.state.queue import HardExample, HardExampleQueue

MIN_PREFIX = 8
STATUSES = ("all", "unlabelled", "needs_human", "labelled", "human", "teacher", "simulator", "skipped")


@dataclass
class QueueItem:
    id: str  # sha256 of the image
    entry_id: str  # stream entry id
    reason: str  # the reasons, ";"-joined (``reasons`` lists them)
    reasons: list[str]
    probability: float  # what the miner answered
    tier: str  # the tier the answer exited at
    tier_probs: dict[str, float]
    validator: str  # hotkey of the validator that sent the image
    ts: float  # when it was queued
    size: int
    labelled: bool  # a label of any provenance (roadwork, no_roadwork or skip)
    label: str | None = None  # roadwork | no_roadwork | skip
    provenance: str | None = None  # human | simulator | teacher
    labelled_by: str | None = None
    labelled_at: float | None = None
    teacher_probability: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        return d


def item_from(ex: HardExample, lab: Label | None) -> QueueItem:
    return QueueItem(
        id=ex.image_hash,
        entry_id=ex.entry_id,
        reason=";".join(ex.reasons),
        reasons=list(ex.reasons),
        probability=round(float(ex.prob), 6),
        tier=ex.tier,
        tier_probs={k: round(float(v), 6) for k, v in ex.tier_probs.items()},
        validator=ex.validator,
        ts=round(float(ex.ts), 3),
        size=int(ex.size),
        labelled=lab is not None,
        label=None if lab is None else lab.value,
        provenance=None if lab is None else lab.provenance,
        labelled_by=None if lab is None else lab.who,
        labelled_at=None if lab is None else round(lab.t, 3),
        teacher_probability=None if lab is None or lab.prob is None else round(lab.prob, 6),
    )


def status_of(item: QueueItem, status: str) -> bool:
    """Whether ``item`` belongs to the list ``status`` (one of ``STATUSES``)."""
    if status == "all":
        return True
    if status == "unlabelled":
        return not item.labelled
    if status == "needs_human":  # what the labelling page asks a person about
        return item.provenance != Provenance.HUMAN
    if status == "labelled":
        return item.labelled
    if status == "skipped":
        return item.label == "skip"
    return item.provenance == status


async def list_items(
    queue: HardExampleQueue, status: str = "all", limit: int | None = None, newest_first: bool = True
) -> list[QueueItem]:
    """Queue entries (one per image) joined with their labels."""
    if status not in STATUSES:
        raise LabelError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    seen: set[str] = set()
    out: list[QueueItem] = []
    entries = await queue.entries()
    for ex in reversed(entries) if newest_first else entries:
        if ex.image_hash in seen:
            continue
        seen.add(ex.image_hash)
        item = item_from(ex, await queue.label_record(ex))
        if status_of(item, status):
            out.append(item)
            if limit is not None and len(out) >= limit:
                break
    return out


async def find_entry(queue: HardExampleQueue, item_id: str) -> HardExample:
    """The queue entry of an id or a unique id prefix; LabelError when none or several match."""
    key = str(item_id).strip().lower()
    if len(key) < MIN_PREFIX or any(c not in "0123456789abcdef" for c in key):
        raise LabelError(f"an item id is the image's sha256 (at least {MIN_PREFIX} hex digits), got {item_id!r:.80}")
    matches: dict[str, HardExample] = {}
    for ex in await queue.entries():
        if ex.image_hash.startswith(key):
            matches.setdefault(ex.image_hash, ex)
    if not matches:
        raise LabelError(f"no queued item with id {key}")
    if len(matches) > 1:
        raise LabelError(f"id prefix {key} matches {len(matches)} items; give more digits")
    return next(iter(matches.values()))


async def label_item(queue: HardExampleQueue, item_id: str, value: str, who: str = "") -> tuple[QueueItem, bool]:
    """A human label for a queued item (``roadwork``, ``no_roadwork`` or ``skip``); returns the item
    as it is now and whether anything changed (a repeat of the same label changes nothing)."""
    ex = await find_entry(queue, item_id)
    change: LabelChange = await queue.labels.set(ex.image_hash, value, Provenance.HUMAN, who)
    return item_from(ex, await queue.label_record(ex)), change.changed


async def undo_item(queue: HardExampleQueue, item_id: str, who: str = "") -> tuple[QueueItem, bool]:
    """Undo the latest human label of a queued item."""
    ex = await find_entry(queue, item_id)
    change = await queue.labels.undo(ex.image_hash, who)
    return item_from(ex, await queue.label_record(ex)), change.changed
