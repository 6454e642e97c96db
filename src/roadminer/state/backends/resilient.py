"""Redis with an in-memory fallback: the miner keeps answering through a Redis outage.

While Redis is down every operation is served by the memory store (counted in STATE_FALLBACKS) and
reconnection is tried with exponential backoff. When Redis answers again, what was written to memory in
the meantime (cache entries, sessions, history points, queued hard examples) is handed back to Redis.
Existing Redis keys win over fallback values on hand-back, so a newer nonce or cache entry written by a
sibling process is never overwritten.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from loguru import logger

from roadminer.core.metrics import STATE_BACKEND_UP, STATE_FALLBACKS
from roadminer.state.backends.memory import MemoryStore
from roadminer.state.store import StateError, StateStore, StreamEntry

T = TypeVar("T")


class ResilientStore(StateStore):
    def __init__(
        self,
        primary: StateStore,
        fallback: MemoryStore | None = None,
        min_backoff_s: float = 0.25,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.primary = primary
        self.fallback = fallback or MemoryStore(prefix=getattr(primary, "prefix", "roadminer:"))
        self.backend = primary.backend
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.up = True
        self._backoff = min_backoff_s
        self._next_try = 0.0
        self._recover_lock = asyncio.Lock()
        self._recovery: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None
        self.fallbacks = 0
        STATE_BACKEND_UP.labels(backend=self.backend).set(1)

    # -- health ------------------------------------------------------------------------------------
    def _mark_down(self, err: Exception) -> None:
        if self.up:
            logger.warning("state backend {} unavailable ({}); serving from memory", self.backend, err)
        self.up = False
        STATE_BACKEND_UP.labels(backend=self.backend).set(0)
        self._next_try = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.max_backoff_s)

    async def _recover(self) -> None:
        """Redis answered again: hand back what the fallback holds, then switch over.

        The hand-back runs as its own task: a caller cancelled half-way (a request's look-up timeout)
        must not abort it, or what was already drained from memory would be lost."""
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.get_running_loop().create_task(self._hand_back())
        await asyncio.shield(self._recovery)

    async def _hand_back(self) -> None:
        async with self._recover_lock:
            if self.up:
                return
            keys = entries = 0
            reset = getattr(self.primary, "reset_connections", None)
            if reset is not None:
                await reset()
            # Requests keep writing to the fallback while the hand-back awaits Redis: drain again until
            # it is empty, then switch over with no await in between (nothing is stranded in memory).
            while True:
                data = self.fallback.drain()
                try:
                    await _replay(self.primary, data)
                except StateError as e:
                    # Hand-back failed half-way: keep what was not written yet in memory (``_replay``
                    # removed everything it wrote from ``data``), so nothing is handed back twice.
                    await _replay(self.fallback, data)
                    self._mark_down(e)
                    return
                keys += len(data["kv"])
                entries += sum(len(v[0]) for v in data["streams"].values())
                if self.fallback.is_empty():
                    break
            self.up = True
            self._backoff = self.min_backoff_s
            STATE_BACKEND_UP.labels(backend=self.backend).set(1)
            logger.info(
                "state backend {} is back; handed back {} keys, {} stream entries", self.backend, keys, entries
            )

    async def _call(self, op: Callable[[StateStore], Awaitable[T]]) -> T:
        if not self.up and time.monotonic() >= self._next_try:
            # Claim the probe: concurrent requests keep using memory instead of each waiting on a ping.
            self._next_try = time.monotonic() + self._backoff
            if await self.primary.ping():
                await self._recover()
            else:
                self._mark_down(StateError("ping failed"))
        if self.up:
            try:
                return await op(self.primary)
            except StateError as e:
                if self.up:  # requests failing together back off once, not once each
                    self._mark_down(e)
        self.fallbacks += 1
        STATE_FALLBACKS.inc()
        return await op(self.fallback)

    async def check(self) -> bool:
        """Probe the backend now (used by the monitor and health endpoints)."""
        if await self.primary.ping():
            if not self.up:
                await self._recover()
            return self.up
        self._mark_down(StateError("ping failed"))
        return False

    def start_monitor(self, interval_s: float = 2.0) -> None:
        """Background probe so recovery (and the hand-back) happens even without traffic."""

        async def _loop() -> None:
            while True:
                await asyncio.sleep(interval_s if self.up else max(self._next_try - time.monotonic(), 0.05))
                try:
                    await self.check()
                except Exception as e:  # never let the monitor die
                    logger.opt(exception=e).debug("state monitor probe failed")

        if self._monitor is None:
            self._monitor = asyncio.create_task(_loop(), name="state-monitor")

    # -- primitives ---------------------------------------------------------------------------------
    async def get_bytes(self, key: str) -> bytes | None:
        return await self._call(lambda s: s.get_bytes(key))

    async def set_bytes(self, key: str, value: bytes, ttl: float | None = None) -> None:
        await self._call(lambda s: s.set_bytes(key, value, ttl))

    async def set_nx(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        return await self._call(lambda s: s.set_nx(key, value, ttl))

    async def set_if_greater(self, key: str, value: int, ttl: float | None = None) -> bool:
        return await self._call(lambda s: s.set_if_greater(key, value, ttl))

    async def delete(self, *keys: str) -> int:
        return await self._call(lambda s: s.delete(*keys))

    async def exists(self, key: str) -> bool:
        return await self._call(lambda s: s.exists(key))

    async def ttl(self, key: str) -> float | None:
        return await self._call(lambda s: s.ttl(key))

    async def incr(self, key: str, amount: int = 1) -> int:
        return await self._call(lambda s: s.incr(key, amount))

    async def list_push(self, key: str, value: bytes, maxlen: int | None = None) -> None:
        await self._call(lambda s: s.list_push(key, value, maxlen))

    async def list_range(self, key: str, start: int = 0, stop: int = -1) -> list[bytes]:
        return await self._call(lambda s: s.list_range(key, start, stop))

    async def zadd(self, key: str, score: float, member: bytes) -> None:
        await self._call(lambda s: s.zadd(key, score, member))

    async def zrange_by_score(
        self, key: str, lo: float, hi: float, limit: int | None = None
    ) -> list[tuple[bytes, float]]:
        return await self._call(lambda s: s.zrange_by_score(key, lo, hi, limit))

    async def zrem_by_score(self, key: str, lo: float, hi: float) -> int:
        return await self._call(lambda s: s.zrem_by_score(key, lo, hi))

    async def zcard(self, key: str) -> int:
        return await self._call(lambda s: s.zcard(key))

    async def sadd(self, key: str, *members: str) -> int:
        return await self._call(lambda s: s.sadd(key, *members))

    async def smembers(self, key: str) -> set[str]:
        return await self._call(lambda s: s.smembers(key))

    async def stream_add(self, stream: str, fields: dict[str, str], maxlen: int | None = None) -> str:
        return await self._call(lambda s: s.stream_add(stream, fields, maxlen))

    async def stream_group_create(self, stream: str, group: str) -> None:
        await self._call(lambda s: s.stream_group_create(stream, group))

    async def _grouped(self, s: StateStore, stream: str, group: str, fn: Callable[[], Awaitable[T]]) -> T:
        if s is self.fallback:  # the fallback may not have seen the group being created
            await s.stream_group_create(stream, group)
        return await fn()

    async def stream_read_group(
        self, stream: str, group: str, consumer: str, count: int = 10, pending: bool = False
    ) -> list[StreamEntry]:
        return await self._call(
            lambda s: self._grouped(
                s, stream, group, lambda: s.stream_read_group(stream, group, consumer, count, pending)
            )
        )

    async def stream_claim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[StreamEntry]:
        return await self._call(
            lambda s: self._grouped(
                s, stream, group, lambda: s.stream_claim(stream, group, consumer, min_idle_ms, count)
            )
        )

    async def stream_ack(self, stream: str, group: str, *ids: str) -> int:
        return await self._call(lambda s: s.stream_ack(stream, group, *ids))

    async def stream_len(self, stream: str) -> int:
        return await self._call(lambda s: s.stream_len(stream))

    async def stream_pending(self, stream: str, group: str) -> int:
        return await self._call(lambda s: s.stream_pending(stream, group))

    async def stream_lag(self, stream: str, group: str) -> int:
        return await self._call(lambda s: s.stream_lag(stream, group))

    async def stream_range(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[StreamEntry]:
        return await self._call(lambda s: s.stream_range(stream, start, end, count))

    async def stream_delete(self, stream: str, *ids: str) -> int:
        return await self._call(lambda s: s.stream_delete(stream, *ids))

    async def ping(self) -> bool:
        return await self.check()

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            self._monitor = None
        await self.primary.close()

    def describe(self) -> dict[str, Any]:
        return {**self.primary.describe(), "up": self.up, "fallbacks": self.fallbacks}


# Keys written with ``set_if_greater`` (SN72 endpoint nonces): on hand-back the larger value wins, so a
# nonce accepted during the outage cannot be replayed once Redis (with its older nonce) is back.
MONOTONIC_PREFIXES = ("nonce:sn72:",)


async def _replay(store: StateStore, data: dict[str, Any]) -> None:
    """Write ``data`` (a fallback drain) into ``store``, removing each item from ``data`` once written.

    If a write fails half-way, ``data`` holds exactly what was not written yet, so the caller can keep
    that remainder without writing anything twice (list entries such as reward outcomes are not
    idempotent)."""
    for key in list(data["kv"]):
        value, ttl = data["kv"][key]
        if key.startswith(MONOTONIC_PREFIXES):
            await store.set_if_greater(key, int(value), ttl)
        else:
            await store.set_nx(key, value, ttl)
        del data["kv"][key]
    for key in list(data["lists"]):
        items = data["lists"][key]
        while items:  # oldest (last) first so the newest ends up in front
            await store.list_push(key, items[-1])
            items.pop()
        del data["lists"][key]
    for key in list(data["zsets"]):
        items = data["zsets"][key]
        while items:
            score, member = items[0]
            await store.zadd(key, score, member)
            items.pop(0)
        del data["zsets"][key]
    for key in list(data["sets"]):
        members = data["sets"][key]
        if members:
            await store.sadd(key, *members)
        del data["sets"][key]
    for stream in list(data["streams"]):
        entries, groups = data["streams"][stream]
        for group in groups:
            await store.stream_group_create(stream, group)
        while entries:
            await store.stream_add(stream, entries[0])
            entries.pop(0)
        del data["streams"][stream]
