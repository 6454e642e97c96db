"""The state interface: a few Redis-shaped primitives that both backends implement identically.

Everything above this layer (sessions, result cache, history, hard-example queue, nonce and KV-cache
stores) is written once against these primitives, so the in-memory default and Redis behave the same.
Values are bytes; callers store JSON or safetensors, never pickle.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any

StreamEntry = tuple[str, dict[str, str]]  # (entry id, fields)


class StateError(RuntimeError):
    """The backend could not serve an operation (connection lost, timeout)."""


class StateStore(ABC):
    """Async key/value, list, sorted-set, set and stream primitives with a key prefix."""

    backend: str = "abstract"

    # -- key/value -------------------------------------------------------------------------------
    @abstractmethod
    async def get_bytes(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def set_bytes(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value``; ``ttl`` in seconds (``None`` keeps it until deleted)."""

    @abstractmethod
    async def set_nx(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Store only if absent; True when stored (used for de-duplication and first-seen checks)."""

    @abstractmethod
    async def set_if_greater(self, key: str, value: int, ttl: float | None = None) -> bool:
        """Atomically store integer ``value`` if the key is absent or holds a smaller integer."""

    @abstractmethod
    async def delete(self, *keys: str) -> int: ...

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abstractmethod
    async def ttl(self, key: str) -> float | None:
        """Seconds left, ``None`` when the key has no expiry or does not exist."""

    @abstractmethod
    async def incr(self, key: str, amount: int = 1) -> int: ...

    # -- bounded lists (newest first) ----------------------------------------------------------------
    @abstractmethod
    async def list_push(self, key: str, value: bytes, maxlen: int | None = None) -> None: ...

    @abstractmethod
    async def list_range(self, key: str, start: int = 0, stop: int = -1) -> list[bytes]: ...

    # -- sorted sets (time series) ------------------------------------------------------------------
    @abstractmethod
    async def zadd(self, key: str, score: float, member: bytes) -> None: ...

    @abstractmethod
    async def zrange_by_score(
        self, key: str, lo: float, hi: float, limit: int | None = None
    ) -> list[tuple[bytes, float]]: ...

    @abstractmethod
    async def zrem_by_score(self, key: str, lo: float, hi: float) -> int: ...

    @abstractmethod
    async def zcard(self, key: str) -> int: ...

    # -- sets ----------------------------------------------------------------------------------------
    @abstractmethod
    async def sadd(self, key: str, *members: str) -> int: ...

    @abstractmethod
    async def smembers(self, key: str) -> set[str]: ...

    # -- streams with consumer groups (durable, acknowledged) -----------------------------------------
    @abstractmethod
    async def stream_add(self, stream: str, fields: dict[str, str], maxlen: int | None = None) -> str: ...

    @abstractmethod
    async def stream_group_create(self, stream: str, group: str) -> None:
        """Create ``group`` reading from the start of ``stream`` (idempotent; creates the stream)."""

    @abstractmethod
    async def stream_read_group(
        self, stream: str, group: str, consumer: str, count: int = 10, pending: bool = False
    ) -> list[StreamEntry]:
        """New entries for the group (``pending=False``) or this consumer's unacknowledged ones."""

    @abstractmethod
    async def stream_claim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[StreamEntry]:
        """Take over entries that another consumer read but did not acknowledge for ``min_idle_ms``."""

    @abstractmethod
    async def stream_ack(self, stream: str, group: str, *ids: str) -> int: ...

    @abstractmethod
    async def stream_len(self, stream: str) -> int: ...

    @abstractmethod
    async def stream_pending(self, stream: str, group: str) -> int: ...

    @abstractmethod
    async def stream_lag(self, stream: str, group: str) -> int:
        """Entries not yet delivered to the group."""

    @abstractmethod
    async def stream_range(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[StreamEntry]: ...

    @abstractmethod
    async def stream_delete(self, stream: str, *ids: str) -> int: ...

    # -- lifecycle -----------------------------------------------------------------------------------
    @abstractmethod
    async def ping(self) -> bool: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # -- JSON helpers ---------------------------------------------------------------------------------
    async def get_json(self, key: str) -> Any:
        raw = await self.get_bytes(key)
        return None if raw is None else json.loads(raw)

    async def set_json(self, key: str, value: Any, ttl: float | None = None) -> None:
        await self.set_bytes(key, dumps(value), ttl)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend}


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def build_store(cfg: Any) -> StateStore:
    """The store the settings ask for (``cfg``: ``roadminer.core.config.StateConfig``). Redis is wrapped in a
    fallback so that an outage degrades to memory instead of failing requests."""
    from roadminer.state.backends.memory import MemoryStore

    if cfg.backend == "memory":
        return MemoryStore(prefix=cfg.key_prefix)
    from roadminer.state.backends.redis_store import RedisStore
    from roadminer.state.backends.resilient import ResilientStore

    redis_store = RedisStore(
        cfg.redis_url, prefix=cfg.key_prefix, socket_timeout=getattr(cfg, "redis_socket_timeout_s", 1.0)
    )
    return ResilientStore(
        redis_store,
        MemoryStore(prefix=cfg.key_prefix),
        max_backoff_s=getattr(cfg, "reconnect_max_backoff_s", 30.0),
    )
