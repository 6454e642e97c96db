"""Per-validator sessions (recent requests, bounded) and the result cache (image sha256 -> answer)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field

from roadminer.core.metrics import CACHE
from roadminer.state.history import LIVE_MARKER_KEY
from roadminer.state.store import StateStore, dumps


@dataclass
class RequestRecord:
    """One answered request as the miner saw it."""

    image_hash: str
    prob: float
    tier: str
    latency_ms: float
    ts: float = field(default_factory=time.time)
    protocol: str = "sn72"
    label: int | None = None  # known only for simulator/validator traffic
    source: str = "live"  # "replay": written by ``roadminer dashboard --replay``, not seen by the miner

    def to_json(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> RequestRecord:
        data = json.loads(raw)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class SessionStore:
    """Newest-first bounded history of requests per validator hotkey."""

    def __init__(self, store: StateStore, max_len: int = 500) -> None:
        self.store = store
        self.max_len = max_len
        self._live_marked = False

    async def record(self, validator: str, rec: RequestRecord) -> None:
        await self.store.list_push(f"session:{validator}", rec.to_json(), self.max_len)
        await self.store.sadd("session:validators", validator)
        if rec.source == "live" and not self._live_marked:
            await self.store.sadd(LIVE_MARKER_KEY, "sessions")  # see roadminer.dashboard.provenance
            self._live_marked = True

    async def recent(self, validator: str, n: int | None = None) -> list[RequestRecord]:
        stop = -1 if n is None else n - 1
        return [
            RequestRecord.from_json(r) for r in await self.store.list_range(f"session:{validator}", 0, stop)
        ]

    async def validators(self) -> set[str]:
        return await self.store.smembers("session:validators")


@dataclass
class CachedAnswer:
    prob: float
    tier: str
    model_version: str
    ts: float


class ResultCache:
    """Answers keyed by the sha256 of the image bytes and the model version (a hot reload starts a
    fresh cache namespace, so a promoted model never serves the old model's answers)."""

    def __init__(self, store: StateStore, ttl_s: float = 3600.0) -> None:
        self.store = store
        self.ttl_s = ttl_s

    @staticmethod
    def _key(image_hash: str, model_version: str) -> str:
        v = hashlib.sha1(model_version.encode()).hexdigest()[:12]
        return f"cache:{v}:{image_hash}"

    async def get(self, image_hash: str, model_version: str) -> CachedAnswer | None:
        raw = await self.store.get_bytes(self._key(image_hash, model_version))
        if raw is None:
            CACHE.labels(result="miss").inc()
            return None
        CACHE.labels(result="hit").inc()
        data = json.loads(raw)
        return CachedAnswer(
            float(data["prob"]), str(data["tier"]), str(data["model_version"]), float(data["ts"])
        )

    async def put(self, image_hash: str, model_version: str, prob: float, tier: str) -> None:
        value = {"prob": float(prob), "tier": tier, "model_version": model_version, "ts": time.time()}
        await self.store.set_bytes(self._key(image_hash, model_version), dumps(value), self.ttl_s)
