"""Time series with retention (reward/MCC per validator, chain metrics), queryable by the dashboard.

Query API::

    h = MetricHistory(store)
    await h.add("reward", 0.42, validator="5F...")
    await h.series("reward", since=time.time() - 3600, validator="5F...")  # [Point(t, value), ...]
    await h.series_by_validator("chain.weight", since)                       # {validator: [Point]}
    await h.names(); await h.validators("reward"); await h.latest("chain.incentive")

Series names in use: ``mcc``, ``accuracy``, ``reward`` (per validator, from labelled simulator or
validator traffic) and ``chain.incentive``, ``chain.trust``, ``chain.emission``, ``chain.consensus``,
``chain.rank`` (the miner's own) plus ``chain.weight`` (per validator: that validator's weight for us).
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from roadminer.core.metrics import ACCURACY, MCC, REWARD
from roadminer.state.store import StateStore, dumps

NO_VALIDATOR = "_"
DEFAULT_RETENTION_S = 30 * 24 * 3600.0
MCC_WINDOW = 100  # outcomes kept per validator (the reference validator's window)


# Where a point came from: traffic the miner saw (or the chain), or ``roadminer dashboard --replay``.
LIVE = "live"
REPLAY = "replay"
# Set of the kinds of live records a store holds ("history", "sessions"); see roadminer.dashboard.provenance.
LIVE_MARKER_KEY = "provenance:live"


@dataclass(frozen=True)
class Point:
    t: float
    value: float
    source: str = LIVE


class MetricHistory:
    """Points kept in one sorted set per (series, validator), scored by time; older than the retention
    are trimmed on write."""

    def __init__(
        self,
        store: StateStore,
        retention_s: float = DEFAULT_RETENTION_S,
        retention_overrides: Mapping[str, float] | None = None,
    ) -> None:
        self.store = store
        self.retention_s = retention_s
        self.retention_overrides = dict(retention_overrides or {})
        self._live_marked = False

    @staticmethod
    def _key(name: str, validator: str | None) -> str:
        return f"hist:{name}:{validator or NO_VALIDATOR}"

    def retention_for(self, name: str) -> float:
        return self.retention_overrides.get(name, self.retention_s)

    async def add(
        self, name: str, value: float, t: float | None = None, validator: str | None = None, source: str = LIVE
    ) -> None:
        """One point; ``source`` ``REPLAY`` marks points written by the dashboard's replay."""
        if not math.isfinite(float(value)):
            raise ValueError(f"series {name!r}: value must be finite, got {value!r}")
        t = time.time() if t is None else float(t)
        key = self._key(name, validator)
        # A random tag keeps equal (t, value) points distinct in the sorted set; a 4th item names a non-live source.
        member = [t, float(value), secrets.token_hex(4)] + ([] if source == LIVE else [source])
        await self.store.zadd(key, t, dumps(member))
        if source == LIVE and not self._live_marked:
            await self.store.sadd(LIVE_MARKER_KEY, "history")
            self._live_marked = True
        await self.store.sadd("hist:names", name)
        await self.store.sadd(f"hist:validators:{name}", validator or NO_VALIDATOR)
        await self.store.zrem_by_score(key, -math.inf, t - self.retention_for(name))

    async def series(
        self,
        name: str,
        since: float | None = None,
        until: float | None = None,
        validator: str | None = None,
        limit: int | None = None,
    ) -> list[Point]:
        lo = -math.inf if since is None else since
        hi = math.inf if until is None else until
        rows = await self.store.zrange_by_score(self._key(name, validator), lo, hi, limit)
        out = []
        for member, _score in rows:
            t, v, _, *rest = json.loads(member)
            out.append(Point(float(t), float(v), str(rest[0]) if rest else LIVE))
        return out

    async def series_by_validator(
        self, name: str, since: float | None = None, until: float | None = None
    ) -> dict[str, list[Point]]:
        out: dict[str, list[Point]] = {}
        for v in sorted(await self.validators(name)):
            if v != NO_VALIDATOR:
                out[v] = await self.series(name, since, until, validator=v)
        return out

    async def latest(self, name: str, validator: str | None = None) -> Point | None:
        now = time.time()
        for window in (3600.0, 86400.0, self.retention_for(name)):  # widen only when nothing recent
            pts = await self.series(name, since=now - window, validator=validator)
            if pts:
                return pts[-1]
        return None

    async def names(self) -> set[str]:
        return await self.store.smembers("hist:names")

    async def validators(self, name: str) -> set[str]:
        return await self.store.smembers(f"hist:validators:{name}")

    async def to_json(self, since: float | None = None) -> dict[str, Any]:
        """Everything since ``since`` as plain JSON (the dashboard's one-call snapshot)."""
        out: dict[str, Any] = {}
        for name in sorted(await self.names()):
            per: dict[str, list[list[float]]] = {}
            for v in sorted(await self.validators(name)):
                per[v] = [
                    [p.t, p.value]
                    for p in await self.series(name, since, validator=None if v == NO_VALIDATOR else v)
                ]
            out[name] = per
        return out


# -- reward formulas ---------------------------------------------------------------------------------


def rolling_metrics(preds: Sequence[float], labels: Sequence[int]) -> dict[str, float]:
    """MCC over the last 100 and accuracy over the last 10 answered challenges, and the reward
    ``(0.5 MCC + 0.5 acc) ** 3``, with the validator's own formulas (``roadminer.core.scoring``).
    ``preds`` and ``labels`` are oldest first; an answer of -1 (no answer) takes a slot in the window and
    is then dropped, as the reference validator does."""
    from roadminer.core.scoring import (
        FAILED,
        WINDOW_ACC,
        WINDOW_MCC,
        is_valid_prediction,
        reward_from_history,
        window_metrics,
    )

    hist = [
        (float(p) if is_valid_prediction(p) else FAILED, int(y)) for p, y in zip(preds, labels, strict=True)
    ]
    m100 = window_metrics(hist, WINDOW_MCC)
    m10 = window_metrics(hist, WINDOW_ACC)
    return {
        "mcc": m100.mcc,
        "accuracy": m10.accuracy,
        "reward": reward_from_history(hist),
        "n": float(m100.n),
    }


@dataclass
class ChainSnapshot:
    """What the chain says about this miner at one moment."""

    incentive: float | None = None
    trust: float | None = None
    emission: float | None = None
    consensus: float | None = None
    rank: float | None = None
    weights: dict[str, float] = field(default_factory=dict)  # validator hotkey -> its weight for us
    t: float | None = None


class RewardTracker:
    """Rolling reward per validator from labelled outcomes, and chain metrics, into MetricHistory."""

    def __init__(
        self, store: StateStore, history: MetricHistory | None = None, ema_alpha: float = 0.1
    ) -> None:
        self.store = store
        self.history = history or MetricHistory(store)
        self.ema_alpha = ema_alpha

    async def record_outcome(
        self, validator: str, prob: float | None, label: int, t: float | None = None, source: str = LIVE
    ) -> dict[str, float]:
        """One scored challenge (``prob`` None or out of range = no answer); returns the rolling metrics."""
        answered = prob is not None and 0.0 <= float(prob) <= 1.0
        value = float(prob) if answered else -1.0
        row = [value, int(label)] + ([] if source == LIVE else [source])
        await self.store.list_push(f"outcomes:{validator}", dumps(row), MCC_WINDOW)
        rows = [json.loads(r) for r in await self.store.list_range(f"outcomes:{validator}")]
        rows.reverse()  # oldest first
        m = rolling_metrics([r[0] for r in rows], [r[1] for r in rows])
        if not answered:
            m["reward"] = 0.0  # the reference scores a missing answer 0 whatever the window says
        for name in ("mcc", "accuracy", "reward"):
            await self.history.add(name, m[name], t, validator=validator, source=source)
        # Reward trend (EMA like the validator's score), read by the hard-example policy on every answer.
        prev = await self.store.get_json(f"reward:ema:{validator}")
        ema = (
            m["reward"] if prev is None else self.ema_alpha * m["reward"] + (1 - self.ema_alpha) * float(prev)
        )
        await self.store.set_json(f"reward:ema:{validator}", ema)
        MCC.labels(validator="all").set(m["mcc"])
        ACCURACY.labels(validator="all").set(m["accuracy"])
        REWARD.labels(validator="all").set(m["reward"])
        return m

    async def reward_trend(self, validator: str) -> float | None:
        """EMA of this validator's rewards, None before the first labelled outcome."""
        value = await self.store.get_json(f"reward:ema:{validator}")
        return None if value is None else float(value)

    async def record_chain(self, snap: ChainSnapshot, source: str = LIVE) -> None:
        t = snap.t or time.time()
        for name in ("incentive", "trust", "emission", "consensus", "rank"):
            value = getattr(snap, name)
            if value is not None:
                await self.history.add(f"chain.{name}", float(value), t, source=source)
        for validator, w in snap.weights.items():
            await self.history.add("chain.weight", float(w), t, validator=validator, source=source)
