"""Hard-example queue: a stream with a consumer group (durable, acknowledged, de-duplicated by image
hash). Images are stored content-addressed (``img:<sha256>``) with a size cap; the stream is capped in
length. Consumers (``export``, the learning loop) read through the group and acknowledge only after the
examples are safely on disk, so a crash re-delivers instead of losing entries.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from loguru import logger

from roadminer.core.metrics import QUEUE_DEPTH
from roadminer.state.labels import Label, LabelStore, Provenance, label_value, provenance_weight
from roadminer.state.store import StateStore

STREAM = "hardq:stream"
GROUP = "trainers"
MANIFEST = "manifest.csv"
MANIFEST_FIELDS = (
    "file",
    "label",
    "source",
    "group",
    "image_hash",
    "reasons",
    "prob",
    "tier",
    "validator",
    "ts",
    "label_origin",
    "soft_label",
    "entry_id",
    "provenance",
    "labelled_by",
    "labelled_at",
    "weight",
)
DEFAULT_PROVENANCE_WEIGHTS = {"human": 1.0, "simulator": 1.0, "teacher": 0.5}


class Reason(StrEnum):
    LOW_MARGIN = "low_margin"
    TIER_DISAGREEMENT = "tier_disagreement"
    VLM_ESCALATION = "vlm_escalation"
    KNOWN_ERROR = "known_error"
    LOW_REWARD_TREND = "low_reward_trend"


@dataclass
class HardExample:
    image_hash: str
    reasons: list[str]
    prob: float
    tier: str
    tier_probs: dict[str, float] = field(default_factory=dict)
    label: int | None = None
    validator: str = ""
    ts: float = field(default_factory=time.time)
    size: int = 0
    source: str = "live"  # "replay": queued by ``roadminer dashboard --replay``
    entry_id: str = ""

    def to_fields(self) -> dict[str, str]:
        data = asdict(self)
        data.pop("entry_id")
        return {"json": json.dumps(data, separators=(",", ":"))}

    @classmethod
    def from_entry(cls, entry_id: str, fields: Mapping[str, str]) -> HardExample:
        data = json.loads(fields["json"])
        data["entry_id"] = entry_id
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class HardExamplePolicy:
    """When an answer is worth a second look. Thresholds are on P(roadwork)."""

    low_margin: float = 0.15  # |p - 0.5| below this
    disagreement: float = 0.4  # two tiers on opposite sides and this far apart
    vlm_tiers: tuple[str, ...] = ("vlm",)  # exit tiers whose name contains one of these
    low_reward: float = 0.3  # mean of the validator's recent rewards below this
    low_reward_margin: float = 0.3  # ...then also queue answers this close to 0.5

    def reasons(
        self,
        prob: float,
        tier: str,
        tier_probs: Mapping[str, float] | None = None,
        label: int | None = None,
        recent_reward: float | None = None,
    ) -> list[str]:
        out: list[str] = []
        margin = abs(prob - 0.5)
        if margin < self.low_margin:
            out.append(Reason.LOW_MARGIN)
        ps = [float(v) for v in (tier_probs or {}).values() if v is not None and math.isfinite(float(v))]
        if len(ps) >= 2 and max(ps) > 0.5 >= min(ps) and max(ps) - min(ps) >= self.disagreement:
            out.append(Reason.TIER_DISAGREEMENT)
        if any(v in tier for v in self.vlm_tiers):
            out.append(Reason.VLM_ESCALATION)
        if label is not None and int(prob > 0.5) != int(label):
            out.append(Reason.KNOWN_ERROR)
        if recent_reward is not None and recent_reward < self.low_reward and margin < self.low_reward_margin:
            out.append(Reason.LOW_REWARD_TREND)
        return [str(r) for r in out]


@dataclass
class ExportReport:
    out_dir: str
    written: dict[str, int]
    acked: int
    skipped_missing_image: int
    pseudo_labelled: int
    manifest: str
    by_provenance: dict[str, int] = field(default_factory=dict)
    skipped_by_human: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Teacher = Callable[[list[bytes]], Sequence[float]]  # encoded images -> P(roadwork)


def sniff_image(data: bytes) -> tuple[str, str]:
    """``(MIME type, file extension)`` of stored image bytes, from their magic number (no decoding)."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg", ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png", ".png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", ".webp"
    if data[:2] == b"BM":
        return "image/bmp", ".bmp"
    return "application/octet-stream", ".img"


class HardExampleQueue:
    def __init__(
        self,
        store: StateStore,
        max_entries: int = 10_000,
        max_image_bytes: int = 512 * 1024,
        image_ttl_s: float = 14 * 24 * 3600.0,
        stream: str = STREAM,
        group: str = GROUP,
    ) -> None:
        self.store = store
        self.max_entries = max_entries
        self.max_image_bytes = max_image_bytes
        self.image_ttl_s = image_ttl_s
        self.stream = stream
        self.group = group
        self.labels = LabelStore(store)
        self._ready = False

    async def _ensure_group(self) -> None:
        if not self._ready:
            await self.store.stream_group_create(self.stream, self.group)
            self._ready = True

    # -- producer side ------------------------------------------------------------------------------
    async def enqueue(
        self,
        image: bytes,
        reasons: Sequence[str],
        prob: float,
        tier: str,
        tier_probs: Mapping[str, float] | None = None,
        label: int | None = None,
        validator: str = "",
        image_hash: str | None = None,
        source: str = "live",
    ) -> str | None:
        """Queue one example; returns its entry id, or None when it was a duplicate or too large."""
        if not reasons:
            return None
        if len(image) > self.max_image_bytes:
            logger.debug(
                "hard example of {} bytes over the {} cap; not queued", len(image), self.max_image_bytes
            )
            return None
        await self._ensure_group()
        digest = image_hash or hashlib.sha256(image).hexdigest()
        if label is not None:
            await self.set_label(digest, label)
        if not await self.store.set_nx(f"hardq:seen:{digest}", b"1", self.image_ttl_s):
            return None
        await self.store.set_bytes(f"img:{digest}", image, self.image_ttl_s)
        ex = HardExample(
            image_hash=digest,
            reasons=list(reasons),
            prob=float(prob),
            tier=tier,
            tier_probs={
                k: float(v)
                for k, v in (tier_probs or {}).items()
                if v is not None and math.isfinite(float(v))
            },
            label=label,
            validator=validator,
            size=len(image),
            source=source,
        )
        entry_id = await self.store.stream_add(self.stream, ex.to_fields(), self.max_entries)
        for r in reasons:
            await self.store.incr(f"hardq:reason:{r}")
        QUEUE_DEPTH.set(await self.store.stream_len(self.stream))
        return entry_id

    async def set_label(
        self, image_hash: str, label: int, provenance: str = Provenance.SIMULATOR, who: str = ""
    ) -> None:
        """Attach a label learnt later (the simulator's challenge label, a validator's published results)
        to the durable label log (``roadminer.state.labels``)."""
        try:
            value = int(label)
            ok = value in (0, 1) and float(label) == value
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"label must be 0 or 1, got {label!r}")
        await self.labels.set(image_hash, value, provenance, who)

    async def label_record(self, ex: HardExample) -> Label | None:
        """The label that counts for ``ex`` (human > simulator > teacher), None when unlabelled."""
        lab = await self.labels.get(ex.image_hash)
        if lab is not None:
            return lab
        raw = await self.store.get_bytes(f"hardq:label:{ex.image_hash}")  # written by earlier versions
        legacy = int(raw) if raw is not None else ex.label
        if legacy not in (0, 1):
            return None
        return Label(ex.image_hash, label_value(int(legacy)), Provenance.SIMULATOR, ex.validator, ex.ts)

    async def label_of(self, ex: HardExample) -> int | None:
        """1 / 0 when the example has a training label; None when unlabelled or skipped by a human."""
        lab = await self.label_record(ex)
        return None if lab is None else lab.target

    async def image(self, image_hash: str) -> bytes | None:
        return await self.store.get_bytes(f"img:{image_hash}")

    # -- consumer side ------------------------------------------------------------------------------
    async def claim(
        self, consumer: str, count: int = 100, reclaim_idle_ms: int = 60_000
    ) -> list[HardExample]:
        """This consumer's unacknowledged entries first, then entries another consumer abandoned for
        ``reclaim_idle_ms``, then new ones."""
        await self._ensure_group()
        got = await self.store.stream_read_group(self.stream, self.group, consumer, count, pending=True)
        if len(got) < count:
            seen = {i for i, _ in got}
            got += [
                e
                for e in await self.store.stream_claim(
                    self.stream, self.group, consumer, reclaim_idle_ms, count - len(got)
                )
                if e[0] not in seen
            ]
        if len(got) < count:
            got += await self.store.stream_read_group(self.stream, self.group, consumer, count - len(got))
        return [HardExample.from_entry(i, f) for i, f in got]

    async def ack(self, *entry_ids: str) -> int:
        n = await self.store.stream_ack(self.stream, self.group, *entry_ids)
        QUEUE_DEPTH.set(
            await self.store.stream_lag(self.stream, self.group)
            + await self.store.stream_pending(self.stream, self.group)
        )
        return n

    async def entries(self, count: int | None = None) -> list[HardExample]:
        """Everything in the stream (read-only, no delivery bookkeeping)."""
        return [
            HardExample.from_entry(i, f) for i, f in await self.store.stream_range(self.stream, count=count)
        ]

    async def stats(self) -> dict[str, Any]:
        await self._ensure_group()
        entries = await self.entries()
        labels: Counter[str] = Counter()
        provenances: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        for ex in entries:
            rec = await self.label_record(ex)
            labels["unlabeled" if rec is None else rec.value] += 1
            provenances["none" if rec is None else rec.provenance] += 1
            reasons.update(ex.reasons)
        return {
            "entries": len(entries),
            "pending": await self.store.stream_pending(self.stream, self.group),
            "undelivered": await self.store.stream_lag(self.stream, self.group),
            "by_reason": dict(sorted(reasons.items())),
            "by_label": dict(sorted(labels.items())),
            "by_provenance": dict(sorted(provenances.items())),
            "enqueued_by_reason": {
                str(r): int(await self.store.get_bytes(f"hardq:reason:{r}") or 0) for r in Reason
            },
            "bytes": sum(ex.size for ex in entries),
            "backend": self.store.describe(),
        }

    async def export(
        self,
        out_dir: str | Path,
        consume: bool = False,
        consumer: str = "export",
        limit: int | None = None,
        teacher: Teacher | None = None,
        pseudo_margin: float = 0.3,
        labelled_only: bool = False,
        weights: Mapping[str, float] | None = None,
    ) -> ExportReport:
        """Write ``roadwork/``, ``no_roadwork/``, ``unlabeled/`` and ``manifest.csv`` (the layout
        ``roadminer.training.data.load_image_folder`` reads; ``provenance`` and ``weight`` columns say who
        labelled each image and how much it counts in training, see ``weights``). With ``consume`` the
        entries are read through the consumer group and acknowledged once written; otherwise the queue is
        left untouched. Unlabelled images get a teacher pseudo-label when ``teacher`` is given and
        confident enough (recorded in the label log with provenance ``teacher``). ``labelled_only`` writes
        no ``unlabeled/`` folder. Images a human skipped are never written. Exporting again into the same
        folder re-syncs it: an image whose label changed moves to its new class folder, and a skipped
        one leaves the export."""
        out = Path(out_dir)
        weights = dict(DEFAULT_PROVENANCE_WEIGHTS if weights is None else weights)
        folders = ("roadwork", "no_roadwork") if labelled_only else ("roadwork", "no_roadwork", "unlabeled")
        for d in folders:
            (out / d).mkdir(parents=True, exist_ok=True)
        if consume:
            batch = await self.claim(consumer, count=limit or self.max_entries)
        else:
            batch = await self.entries(count=limit)
        rows: list[dict[str, Any]] = []
        missing = 0
        unlabelled: list[tuple[HardExample, bytes]] = []
        labelled: list[tuple[HardExample, bytes, Label]] = []
        done_ids: list[str] = []
        skipped = 0
        retired: set[str] = set()
        for ex in batch:
            data = await self.image(ex.image_hash)
            if data is None:  # image expired or was never stored: nothing to learn from
                missing += 1
                done_ids.append(ex.entry_id)
                continue
            rec = await self.label_record(ex)
            if rec is None:
                unlabelled.append((ex, data))
            elif rec.target is None:  # a human said this image should not train
                skipped += 1
                retired.add(ex.image_hash)
                _retire(out, ex.image_hash)
                done_ids.append(ex.entry_id)
            else:
                labelled.append((ex, data, rec))
        pseudo = 0
        if teacher is not None and unlabelled:
            probs = list(teacher([d for _, d in unlabelled]))
            still: list[tuple[HardExample, bytes]] = []
            for (ex, data), p in zip(unlabelled, probs, strict=True):
                if abs(float(p) - 0.5) >= pseudo_margin:
                    change = await self.labels.set(
                        ex.image_hash, int(float(p) > 0.5), Provenance.TEACHER, "export-teacher", float(p)
                    )
                    if change.label is not None and change.label.target is not None:
                        labelled.append((ex, data, change.label))
                        pseudo += 1
                else:
                    still.append((ex, data))
            unlabelled = still
        written: Counter[str] = Counter()
        by_prov: Counter[str] = Counter()
        items: list[tuple[HardExample, bytes, Label | None]] = [(ex, d, rec) for ex, d, rec in labelled]
        if not labelled_only:
            items += [(ex, d, None) for ex, d in unlabelled]
        for ex, data, rec in items:
            lab = None if rec is None else rec.target
            folder = "unlabeled" if lab is None else ("roadwork" if lab == 1 else "no_roadwork")
            rel = f"{folder}/{ex.image_hash}{sniff_image(data)[1]}"
            path = out / rel
            _retire(out, ex.image_hash, keep=rel)
            if not path.exists():
                path.write_bytes(data)
            written[folder] += 1
            if rec is not None:
                by_prov[rec.provenance] += 1
            origin = "" if rec is None else ("teacher" if rec.provenance == Provenance.TEACHER else "known")
            soft = None if rec is None else rec.prob
            rows.append(
                {
                    "file": rel,
                    "label": "" if lab is None else lab,
                    "source": "hard_examples",
                    "group": ex.image_hash[:16],
                    "image_hash": ex.image_hash,
                    "reasons": ";".join(ex.reasons),
                    "prob": round(ex.prob, 6),
                    "tier": ex.tier,
                    "validator": ex.validator,
                    "ts": round(ex.ts, 3),
                    "label_origin": origin,
                    "soft_label": "" if soft is None else round(soft, 6),
                    "entry_id": ex.entry_id,
                    "provenance": "" if rec is None else rec.provenance,
                    "labelled_by": "" if rec is None else rec.who,
                    "labelled_at": "" if rec is None else round(rec.t, 3),
                    "weight": "" if rec is None else provenance_weight(rec, weights),
                }
            )
            done_ids.append(ex.entry_id)
        manifest = out / MANIFEST
        _merge_manifest(manifest, rows, retired)
        acked = await self.ack(*done_ids) if consume and done_ids else 0
        report = ExportReport(
            str(out),
            {k: written.get(k, 0) for k in folders},
            acked,
            missing,
            pseudo,
            str(manifest),
            dict(sorted(by_prov.items())),
            skipped,
        )
        logger.info(
            "exported hard examples to {}: {} (acked {}, pseudo-labelled {})",
            out,
            dict(written),
            acked,
            pseudo,
        )
        return report


def _retire(out: Path, image_hash: str, keep: str | None = None) -> None:
    """Remove earlier exports of an image from the class folders (all but ``keep``, a relative path)."""
    for folder in ("roadwork", "no_roadwork", "unlabeled"):
        d = out / folder
        if d.is_dir():
            for p in d.glob(f"{image_hash}.*"):
                if f"{folder}/{p.name}" != keep:
                    p.unlink(missing_ok=True)


def _merge_manifest(path: Path, rows: list[dict[str, Any]], retired: set[str] | None = None) -> None:
    """Append to an existing manifest (one row per image: a later row for the same file or image hash
    wins; rows of ``retired`` image hashes are dropped)."""
    existing: dict[str, dict[str, Any]] = {}
    drop = set(retired or ()) | {str(r["image_hash"]) for r in rows if r.get("image_hash")}
    if path.is_file():
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if row.get("image_hash") and row["image_hash"] in drop:
                    continue
                existing[row["file"]] = row
    for row in rows:
        existing[row["file"]] = row
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(MANIFEST_FIELDS), extrasaction="ignore")
        w.writeheader()
        for row in existing.values():
            w.writerow(row)
    tmp.replace(path)
