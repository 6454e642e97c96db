"""Fill the dashboard's history by replaying validator-style challenges through the configured cascade.

Each challenge is built as the reference validator builds it (label 50/50, augmentation level 0..3,
JPEG q75 224x224) from an image folder or drawn scenes, answered by the real cascade, and recorded with
the real reward formulas at timestamps spread over the past ``span_s`` seconds, as if a few validators
had queried the miner at their usual cadence. The per-validator score EMA the validators would keep
(``0.05·reward + 0.95·score``) is recorded as each validator's ``chain.weight``, and their mean as
``chain.incentive``; trust and emission need the real chain and are left to the chain sync.

Replayed data is not validator traffic: every record written here carries ``source: "replay"`` and the
run is noted under ``replay:runs`` (see :mod:`roadminer.dashboard.provenance`); the dashboard labels it.
A store that already holds live history is refused (``ReplayRefused``) unless ``force`` is set.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from roadminer.dashboard.data import QUEUE_DEPTH_SERIES
from roadminer.dashboard.provenance import live_history, mark_live, note_replay_run
from roadminer.state.history import REPLAY, ChainSnapshot
from roadminer.state.layer import StateLayer
from roadminer.state.model_events import record_model_event
from roadminer.state.sessions import RequestRecord

SCORE_ALPHA = 0.05


class ReplayRefused(RuntimeError):
    """The store holds live history that replayed points would mix with."""


@dataclass
class ReplayReport:
    challenges: int
    validators: int
    queued: int
    mcc: float
    accuracy: float
    reward: float


def _validator_hotkeys(n: int, rng: np.random.Generator) -> list[str]:
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    return ["5" + "".join(alphabet[int(i)] for i in rng.integers(0, len(alphabet), 47)) for _ in range(n)]


async def replay_history(
    state: StateLayer,
    settings: Any,
    images: str | None = None,
    n: int = 300,
    validators: int = 3,
    span_s: float = 6 * 3600.0,
    seed: int = 0,
    batch: int = 16,
    now: float | None = None,
    progress: bool = True,
    force: bool = False,
) -> ReplayReport:
    """Replay ``n`` challenges into ``state``; raises ``ReplayRefused`` when the store holds live history
    and ``force`` is not set (with ``force`` the replayed records are still marked)."""
    live = await live_history(state.store)
    if live.present and not force:
        raise ReplayRefused(
            f"refusing to replay into a store that holds real history ({live.describe()}): replayed "
            "points would be charted beside it. Use an empty store (e.g. another Redis db or key prefix), "
            "or pass --force to write anyway (replayed records stay marked as replayed)."
        )
    if live.legacy:
        await mark_live(state.store, "legacy")  # keep the unmarked history detectable after this run

    from rich.progress import Progress

    from roadminer.cascade.router import EarlyExitRouter
    from roadminer.models.base import ImageBatch
    from roadminer.validator.challenges import build_source, make_challenge

    rng = np.random.default_rng(seed)
    source = build_source(images)
    router = EarlyExitRouter.from_config(settings.cascade)
    hotkeys = _validator_hotkeys(validators, rng)
    now = time.time() if now is None else now
    times = np.sort(now - span_s + rng.random(n) * span_s)
    who = rng.integers(0, validators, n)
    await note_replay_run(
        state.store, n=n, validators=hotkeys, span_s=span_s, seed=seed, images=images or "scenes",
        model=router.version, forced=bool(force and live.present),
    )
    await record_model_event(state.store, router.version, "loaded", t=now - span_s, source=REPLAY)
    scores = dict.fromkeys(hotkeys, 0.0)
    last: dict[str, float] = {}
    queued = 0
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("replaying challenges", total=n)
        for start in range(0, n, batch):
            idx = list(range(start, min(start + batch, n)))
            chals = [make_challenge(source, rng) for _ in idx]
            rgb = [np.asarray(Image.open(io.BytesIO(c.jpeg)).convert("RGB")) for c in chals]
            keys = [hashlib.sha256(c.jpeg).hexdigest() for c in chals]
            t_start = time.perf_counter()
            res = router.predict(ImageBatch(rgb=rgb, payloads=[c.jpeg for c in chals], keys=keys))
            per_image_ms = (time.perf_counter() - t_start) * 1000.0 / len(idx)
            for j, i in enumerate(idx):
                hk, t, c = hotkeys[int(who[i])], float(times[i]), chals[j]
                prob, tier = float(res.prob[j]), res.exit_tier[j]
                latency = per_image_ms * (1.0 + 0.3 * rng.random())
                await state.sessions.record(
                    hk, RequestRecord(keys[j], prob, tier, latency, ts=t, label=c.label, source=REPLAY)
                )
                m = await state.rewards.record_outcome(hk, prob, c.label, t=t, source=REPLAY)
                scores[hk] = SCORE_ALPHA * m["reward"] + (1 - SCORE_ALPHA) * scores[hk]
                last.update(m)
                tier_probs = {k: float(v[j]) for k, v in res.tier_probs.items() if np.isfinite(v[j])}
                reasons = state.policy.reasons(prob, tier, tier_probs, c.label, None)
                if reasons:
                    entry = await state.queue.enqueue(
                        c.jpeg, reasons, prob, tier, tier_probs, c.label, hk, keys[j], source=REPLAY
                    )
                    queued += int(entry is not None)
                if i % 10 == 0:
                    depth = await state.queue.store.stream_len(state.queue.stream)
                    await state.history.add(QUEUE_DEPTH_SERIES, float(depth), t, source=REPLAY)
                    await state.rewards.record_chain(
                        ChainSnapshot(
                            incentive=float(np.mean(list(scores.values()))), weights=dict(scores), t=t
                        ),
                        source=REPLAY,
                    )
            bar.advance(task, len(idx))
    router.close()
    return ReplayReport(
        n, validators, queued, last.get("mcc", 0.0), last.get("accuracy", 0.0), last.get("reward", 0.0)
    )
