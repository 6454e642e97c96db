"""The teacher: labels queued hard examples where it is confident, with provenance ``teacher``.

``learning.teacher_tier`` says who teaches:

* ``"cascade"`` (default): the served cascade (the registry's served versions applied) with **every**
  tier run on every image (no early exit), pooled by the cascade's own consensus, plus any
  ``learning.teacher_tiers`` (tiers only the teacher runs: the YOLO detector, a VLM) pooled with it by
  weighted log-odds (``TierConfig.weight``);
* a tier name: that tier of ``cascade.tiers`` alone (it may be ``enabled: false``: configured for
  teaching, not serving);
* ``None``: no teacher labels at all.

A teacher label is written only when the pooled probability is at least ``learning.pseudo_margin`` from
0.5 and, with ``learning.teacher_agreement``, every voter (the cascade and each extra tier) is on the same
side. It never replaces a human or simulator label (``roadminer.state.labels`` ranks them higher), and a
human label given later overrides it. The queue's images are the miner's uncertain answers, so most stay
unlabelled: the teacher is there to add the cases a stronger, slower view settles.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from loguru import logger

from roadminer.lifecycle.registry import ModelRegistry

CASCADE = "cascade"


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


@dataclass
class TeacherVotes:
    prob: np.ndarray  # pooled P(roadwork) per image (NaN: nobody answered)
    voters: dict[str, np.ndarray]  # each voter's P(roadwork), NaN where it did not answer


class QueueTeacher:
    """Builds the teacher once; ``votes(payloads)`` labels encoded images (runs on a worker thread)."""

    def __init__(self, settings: Any, registry: ModelRegistry | None = None, mode: str | None = None) -> None:
        from roadminer.imaging.decode import ImagePolicy
        from roadminer.models.base import build_tier

        self.settings = settings
        self.mode = mode or settings.learning.teacher_tier
        if not self.mode:
            raise ValueError("no teacher configured (learning.teacher_tier is null)")
        self.policy = ImagePolicy.from_config(settings.images)
        cascade = registry.apply(settings.cascade) if registry is not None else settings.cascade
        self.extras: list[tuple[str, float, Any]] = []
        if self.mode == CASCADE:
            from roadminer.cascade.router import EarlyExitRouter

            self.model: Any = EarlyExitRouter.from_config(cascade)
            for t in settings.learning.teacher_tiers:
                if t.enabled:
                    self.extras.append((t.name, float(t.weight), build_tier(t.kind, t.name, t.options)))
        else:
            matches = [t for t in cascade.tiers if t.name == self.mode]
            if not matches:
                raise ValueError(
                    f"teacher tier {self.mode!r} is not in the cascade ({[t.name for t in cascade.tiers]})"
                )
            t = matches[0]
            self.model = build_tier(t.kind, t.name, t.options)
        parts = [str(getattr(self.model, "version", self.mode))] + [
            f"{name}:{getattr(tier, 'version', '?')}" for name, _, tier in self.extras
        ]
        self.version = f"{self.mode}[{' + '.join(parts)}]"

    def votes(self, payloads: list[bytes], chunk: int = 32) -> TeacherVotes:
        from roadminer.imaging.decode import decode_rgb
        from roadminer.models.base import ImageBatch

        n = len(payloads)
        names = [self.mode] + [name for name, _, _ in self.extras]
        voters = {name: np.full(n, np.nan) for name in names}
        for i in range(0, n, chunk):
            part = payloads[i : i + chunk]
            batch = ImageBatch(
                rgb=[decode_rgb(b, self.policy) for b in part],
                payloads=list(part),
                keys=[hashlib.sha256(b).hexdigest() for b in part],
            )
            if self.mode == CASCADE:
                res = self.model.predict(batch, early_exit=False)
                # The cascade's fallback answer (no tier answered) is not a vote.
                answered = np.array([t != "fallback" for t in res.exit_tier])
                voters[self.mode][i : i + len(part)] = np.where(answered, res.prob, np.nan)
            else:
                voters[self.mode][i : i + len(part)] = np.asarray(self.model.predict(batch).prob, dtype=np.float64)
            for name, _, tier in self.extras:
                try:
                    voters[name][i : i + len(part)] = np.asarray(tier.predict(batch).prob, dtype=np.float64)
                except Exception as e:  # an extra voter that fails abstains
                    logger.warning("teacher tier {} failed on {} images: {!r}", name, len(part), e)
        weights = [1.0] + [w for _, w, _ in self.extras]
        z = np.stack([_logit(voters[name]) for name in names])  # NaN stays NaN
        w = np.array(weights)[:, None] * np.isfinite(z)
        total = w.sum(axis=0)
        pooled_z = np.where(total > 0, np.nansum(np.nan_to_num(z) * w, axis=0) / np.maximum(total, 1e-12), np.nan)
        return TeacherVotes(prob=1.0 / (1.0 + np.exp(-pooled_z)), voters=voters)

    def close(self) -> None:
        for m in [self.model, *[t for _, _, t in self.extras]]:
            if hasattr(m, "close"):
                try:
                    m.close()
                except Exception as e:
                    logger.debug("closing teacher part failed: {!r}", e)


def decide(votes: TeacherVotes, margin: float, agreement: bool = True) -> list[int | None]:
    """Per image: 1 / 0 where the teacher is confident (and, with ``agreement``, unanimous), else None."""
    out: list[int | None] = []
    for i, p in enumerate(votes.prob):
        if not np.isfinite(p) or abs(float(p) - 0.5) < margin:
            out.append(None)
            continue
        side = int(p > 0.5)
        if agreement:
            sides = {int(v[i] > 0.5) for v in votes.voters.values() if np.isfinite(v[i])}
            if sides != {side}:
                out.append(None)
                continue
        out.append(side)
    return out


@dataclass
class TeachReport:
    teacher: str
    considered: int = 0
    labelled: dict[str, int] = field(default_factory=lambda: {"roadwork": 0, "no_roadwork": 0})
    unsure: int = 0
    kept_other_provenance: int = 0  # already labelled by a human or the simulator: never touched
    kept_same_teacher: int = 0  # labelled by this same teacher version before: not run again
    missing_image: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.labelled.values())

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


async def teach_queue(
    settings: Any,
    queue: Any,
    registry: ModelRegistry | None = None,
    teacher: QueueTeacher | None = None,
    limit: int | None = None,
) -> TeachReport:
    """Teacher labels for the queue's images that have no human or simulator label (``queue``: a
    ``HardExampleQueue``). Images an older teacher version labelled are looked at again (a newer teacher
    may settle them differently); nothing else is changed."""
    from roadminer.state.labels import Provenance

    t0 = time.time()
    owned = teacher is None
    teacher = teacher or await asyncio.to_thread(QueueTeacher, settings, registry)
    rep = TeachReport(teacher=teacher.version)
    try:
        todo: list[tuple[str, bytes]] = []
        seen: set[str] = set()
        for ex in reversed(await queue.entries()):
            if ex.image_hash in seen:
                continue
            seen.add(ex.image_hash)
            rec = await queue.label_record(ex)
            if rec is not None and rec.provenance != Provenance.TEACHER:
                rep.kept_other_provenance += 1
                continue
            if rec is not None and rec.who == teacher.version:  # this very teacher labelled it already
                rep.kept_same_teacher += 1
                continue
            data = await queue.image(ex.image_hash)
            if data is None:
                rep.missing_image += 1
                continue
            todo.append((ex.image_hash, data))
            if limit is not None and len(todo) >= limit:
                break
        rep.considered = len(todo)
        if todo:
            votes = await asyncio.to_thread(teacher.votes, [d for _, d in todo])
            margin = float(settings.learning.pseudo_margin)
            for (h, _), side, p in zip(
                todo, decide(votes, margin, settings.learning.teacher_agreement), votes.prob, strict=True
            ):
                if side is None:
                    rep.unsure += 1
                    continue
                await queue.labels.set(h, side, Provenance.TEACHER, teacher.version, float(p))
                rep.labelled["roadwork" if side else "no_roadwork"] += 1
    finally:
        if owned:
            teacher.close()
    rep.seconds = round(time.time() - t0, 2)
    logger.info(
        "teacher {} looked at {} queued images: {} labelled ({}), {} unsure",
        rep.teacher,
        rep.considered,
        rep.total,
        rep.labelled,
        rep.unsure,
    )
    return rep
