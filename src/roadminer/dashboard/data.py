"""What the dashboard shows, read from the state layer as one JSON snapshot.

Sources: reward/MCC/accuracy per validator and the chain metrics from ``MetricHistory``; tier exit
rates and latency percentiles from the per-validator sessions (recent requests); the hard-example queue
depth from the queue stream (sampled into history by :class:`QueueSampler`); model versions and
promotions from the ``models:events`` list (:func:`roadminer.state.model_events.record_model_event`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np
from loguru import logger

from roadminer.core.aio import cancel_and_wait
from roadminer.dashboard.provenance import live_history, replay_runs
from roadminer.state.history import NO_VALIDATOR, REPLAY
from roadminer.state.layer import StateLayer
from roadminer.state.model_events import model_events

REWARD_SERIES = ("reward", "mcc", "accuracy")
CHAIN_SERIES = ("incentive", "trust", "consensus", "emission")
QUEUE_DEPTH_SERIES = "queue.depth"


def _pairs(points: Any) -> list[list[float]]:
    return [[round(p.t, 3), p.value] for p in points]


def _bucket_mean(points: list[list[float]], t0: float, t1: float, buckets: int) -> list[list[float]]:
    """Mean of all points per time bucket (bucket centre as time); empty buckets are skipped."""
    if not points:
        return []
    width = (t1 - t0) / buckets
    sums: dict[int, list[float]] = defaultdict(list)
    for t, v in points:
        i = min(int((t - t0) / width), buckets - 1) if width > 0 else 0
        sums[max(i, 0)].append(v)
    return [[round(t0 + (i + 0.5) * width, 3), float(np.mean(vs))] for i, vs in sorted(sums.items())]


def _set_reward_gauges(per_validator: dict[str, dict[str, float]], overall: dict[str, float | None]) -> None:
    """Prometheus reward/MCC/accuracy gauges from history: outcomes may be recorded by another process
    (the simulator or a validator writing into the same Redis), so the gauges follow the history."""
    from roadminer.core.metrics import ACCURACY, MCC, REWARD

    gauges = {"reward": REWARD, "mcc": MCC, "accuracy": ACCURACY}
    for v, values in per_validator.items():
        for name, value in values.items():
            if name in gauges:
                gauges[name].labels(validator=v).set(value)
    for name, value in overall.items():
        if name in gauges and value is not None:
            gauges[name].labels(validator="all").set(value)


async def refresh_reward_gauges(state: StateLayer) -> None:
    """Set the gauges from each validator's latest point (see :func:`_set_reward_gauges`)."""
    per: dict[str, dict[str, float]] = defaultdict(dict)
    for name in REWARD_SERIES:
        for v in await state.history.validators(name):
            if v == NO_VALIDATOR:
                continue
            p = await state.history.latest(name, validator=v)
            if p is not None:
                per[v][name] = p.value
    overall = {
        name: float(np.mean(vals)) if (vals := [m[name] for m in per.values() if name in m]) else None
        for name in REWARD_SERIES
    }
    _set_reward_gauges(per, overall)


class DashboardData:
    """Builds the dashboard's JSON snapshot from a :class:`StateLayer`."""

    def __init__(self, state: StateLayer, buckets: int = 48, miner_url: str | None = None) -> None:
        self.state = state
        self.buckets = buckets
        self.miner_url = miner_url.rstrip("/") if miner_url else None

    async def reward(self, since: float, now: float) -> dict[str, Any]:
        h = self.state.history
        validators: dict[str, dict[str, list[list[float]]]] = defaultdict(dict)
        overall: dict[str, list[list[float]]] = {}
        latest: dict[str, float | None] = {}
        replayed: set[str] = set()
        for name in REWARD_SERIES:
            pooled: list[list[float]] = []
            last: list[float] = []
            for v, pts in (await h.series_by_validator(name, since, now)).items():
                if any(p.source == REPLAY for p in pts):
                    replayed.add(v)
                pairs = _pairs(pts)
                validators[v][name] = pairs
                pooled += pairs
                if pairs:
                    last.append(pairs[-1][1])
            pooled.sort()
            overall[name] = _bucket_mean(pooled, since, now, self.buckets)
            latest[name] = float(np.mean(last)) if last else None
        _set_reward_gauges(
            {v: {k: pts[-1][1] for k, pts in m.items() if pts} for v, m in validators.items()}, latest
        )
        return {
            "overall": overall,
            "validators": dict(sorted(validators.items())),
            "latest": latest,
            "replayed": sorted(replayed),  # validators whose points in the window were replayed
        }

    async def chain(self, since: float, now: float) -> dict[str, Any]:
        h = self.state.history
        out: dict[str, Any] = {}
        latest: dict[str, float | None] = {}
        replayed: list[str] = []
        for name in CHAIN_SERIES:
            points = await h.series(f"chain.{name}", since, now)
            if any(p.source == REPLAY for p in points):
                replayed.append(name)
            pts = _pairs(points)
            out[name] = pts
            latest[name] = pts[-1][1] if pts else None
        by_validator = await h.series_by_validator("chain.weight", since, now)
        weights = {v: _pairs(p) for v, p in by_validator.items()}
        if any(p.source == REPLAY for pts in by_validator.values() for p in pts):
            replayed.append("weight")
        return {"series": out, "latest": latest, "weights": weights, "replayed": replayed}

    async def requests(self, since: float, now: float) -> dict[str, Any]:
        """Tier exit shares and latency percentiles per time bucket, from the sessions."""
        records = []
        for v in await self.state.sessions.validators():
            records += [r for r in await self.state.sessions.recent(v) if since <= r.ts <= now]
        records.sort(key=lambda r: r.ts)
        width = (now - since) / self.buckets
        by_bucket: dict[int, list[Any]] = defaultdict(list)
        for r in records:
            by_bucket[min(int((r.ts - since) / width), self.buckets - 1)].append(r)
        tiers = sorted({r.tier for r in records})
        share: dict[str, list[list[float]]] = {t: [] for t in tiers}
        lat: dict[str, list[list[float]]] = {"p50": [], "p90": [], "p99": []}
        for i, rs in sorted(by_bucket.items()):
            tc = round(since + (i + 0.5) * width, 3)
            counts = Counter(r.tier for r in rs)
            for t in tiers:
                share[t].append([tc, counts.get(t, 0) / len(rs)])
            ms = np.asarray([r.latency_ms for r in rs], dtype=np.float64)
            for q in (50, 90, 99):
                lat[f"p{q}"].append([tc, float(np.percentile(ms, q))])
        totals = Counter(r.tier for r in records)
        all_ms = np.asarray([r.latency_ms for r in records], dtype=np.float64)
        summary = {f"p{q}": float(np.percentile(all_ms, q)) for q in (50, 90, 99)} if len(all_ms) else {}
        return {
            "n": len(records),
            "replayed": sum(r.source == REPLAY for r in records),
            "tier_exit_share": share,
            "tier_totals": dict(totals),
            "latency_ms": lat,
            "latency_summary_ms": summary,
        }

    async def queue(self, since: float, now: float) -> dict[str, Any]:
        q = self.state.queue
        depth = None
        with contextlib.suppress(Exception):
            depth = await q.store.stream_len(q.stream)
        points = await self.state.history.series(QUEUE_DEPTH_SERIES, since, now)
        return {"depth": depth, "series": _pairs(points), "replayed": any(p.source == REPLAY for p in points)}

    async def miner_health(self) -> dict[str, Any] | None:
        if not self.miner_url:
            return None
        import aiohttp

        try:
            timeout = aiohttp.ClientTimeout(total=1.5)
            async with aiohttp.ClientSession(timeout=timeout) as s, s.get(f"{self.miner_url}/health") as r:
                body = await r.json(content_type=None)
                return {"up": r.status == 200, "health": body}
        except Exception as e:  # the dashboard stays up when the miner is not
            return {"up": False, "error": type(e).__name__}

    async def snapshot(self, window_s: float = 86400.0, now: float | None = None) -> dict[str, Any]:
        from roadminer.dashboard.forensics_panel import forensics_data

        now = time.time() if now is None else float(now)
        since = now - float(window_s)
        reward, chain, reqs, queue, events, miner, forensics, runs, live = await asyncio.gather(
            self.reward(since, now),
            self.chain(since, now),
            self.requests(since, now),
            self.queue(since, now),
            model_events(self.state.store, since),
            self.miner_health(),
            forensics_data(self.state.store, since, now),
            replay_runs(self.state.store),
            live_history(self.state.store),
        )
        current = next((e for e in reversed(events) if e.get("event") in ("loaded", "promoted")), None)
        in_window = bool(reward["replayed"] or chain["replayed"] or reqs["replayed"] or queue["replayed"])
        return {
            "provenance": {
                "replayed_in_window": in_window,  # some charted point is a replay, not validator traffic
                "live_history": live.present,
                "replay_runs": runs[:10],
            },
            "generated_at": now,
            "window": {"since": since, "until": now, "seconds": float(window_s)},
            "backend": self.state.store.describe(),
            "reward": reward,
            "chain": chain,
            "requests": reqs,
            "queue": queue,
            "models": {"events": events, "current": current},
            "miner": miner,
            "forensics": forensics,
        }


class QueueSampler:
    """Writes the hard-example queue depth into history every ``interval_s`` (and the gauge)."""

    def __init__(self, state: StateLayer, interval_s: float = 60.0) -> None:
        self.state = state
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def sample_once(self) -> int:
        from roadminer.core.metrics import QUEUE_DEPTH

        q = self.state.queue
        depth = await q.store.stream_len(q.stream)
        QUEUE_DEPTH.set(depth)
        await self.state.history.add(QUEUE_DEPTH_SERIES, float(depth))
        await refresh_reward_gauges(self.state)
        return depth

    async def _run(self) -> None:
        while True:
            try:
                await self.sample_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.debug("queue sample failed: {}", e)
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None


__all__ = [
    "NO_VALIDATOR",
    "DashboardData",
    "QueueSampler",
    "refresh_reward_gauges",
]
