"""In-process state (the embedded default and the fallback during a Redis outage).

Semantics follow Redis: lazy TTL expiry, newest-first lists, score-ordered sets, streams with
``ms-seq`` ids and consumer groups that track delivered-but-unacknowledged entries. All operations run
on the event loop without awaiting inside, so they are atomic with respect to each other.
"""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from roadminer.state.store import StateStore, StreamEntry


def _parse_id(entry_id: str) -> tuple[int, int]:
    if entry_id in ("-", "0"):
        return (0, 0)
    if entry_id == "+":
        return (2**63, 2**63)
    ms, _, seq = entry_id.partition("-")
    return (int(ms), int(seq or 0))


@dataclass
class _Group:
    last: tuple[int, int] = (0, 0)
    # entry id -> (consumer, last delivery time in ms)
    pending: dict[str, tuple[str, float]] = field(default_factory=dict)


@dataclass
class _Stream:
    entries: OrderedDict[str, dict[str, str]] = field(default_factory=OrderedDict)
    groups: dict[str, _Group] = field(default_factory=dict)
    last_id: tuple[int, int] = (0, 0)


# Expired keys are also swept this often (on a write): keys written once and never read again (btauth
# nonces, result-cache entries) would otherwise stay in memory forever under lazy expiry.
SWEEP_INTERVAL_S = 30.0


class MemoryStore(StateStore):
    backend = "memory"

    def __init__(self, prefix: str = "roadminer:") -> None:
        self.prefix = prefix
        self._kv: dict[str, bytes] = {}
        self._expiry: dict[str, float] = {}
        self._lists: dict[str, list[bytes]] = {}
        self._zsets: dict[str, list[tuple[float, bytes]]] = {}
        self._sets: dict[str, set[str]] = {}
        self._streams: dict[str, _Stream] = {}
        self._next_sweep = time.time() + SWEEP_INTERVAL_S

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _alive(self, k: str) -> bool:
        exp = self._expiry.get(k)
        if exp is not None and exp <= time.time():
            self._kv.pop(k, None)
            self._expiry.pop(k, None)
            return False
        return k in self._kv

    # -- key/value -------------------------------------------------------------------------------
    async def get_bytes(self, key: str) -> bytes | None:
        k = self._k(key)
        return self._kv[k] if self._alive(k) else None

    def _set(self, k: str, value: bytes, ttl: float | None) -> None:
        now = time.time()
        if now >= self._next_sweep:
            self._sweep(now)
        self._kv[k] = bytes(value)
        if ttl is not None and ttl > 0:
            self._expiry[k] = now + ttl
        else:
            self._expiry.pop(k, None)

    def _sweep(self, now: float) -> None:
        """Drop every expired key (Redis expires keys actively too)."""
        for k in [k for k, exp in self._expiry.items() if exp <= now]:
            self._kv.pop(k, None)
            self._expiry.pop(k, None)
        self._next_sweep = now + SWEEP_INTERVAL_S

    async def set_bytes(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._set(self._k(key), value, ttl)

    async def set_nx(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        k = self._k(key)
        if self._alive(k):
            return False
        self._set(k, value, ttl)
        return True

    async def set_if_greater(self, key: str, value: int, ttl: float | None = None) -> bool:
        k = self._k(key)
        if self._alive(k) and int(self._kv[k]) >= value:
            return False
        self._set(k, str(int(value)).encode(), ttl)
        return True

    async def delete(self, *keys: str) -> int:
        n = 0
        for key in keys:
            k = self._k(key)
            found = self._alive(k)
            self._kv.pop(k, None)
            self._expiry.pop(k, None)
            for coll in (self._lists, self._zsets, self._sets, self._streams):
                if coll.pop(k, None) is not None:
                    found = True
            n += int(found)
        return n

    async def exists(self, key: str) -> bool:
        k = self._k(key)
        return self._alive(k) or any(k in c for c in (self._lists, self._zsets, self._sets, self._streams))

    async def ttl(self, key: str) -> float | None:
        k = self._k(key)
        if not self._alive(k) or k not in self._expiry:
            return None
        return max(0.0, self._expiry[k] - time.time())

    async def incr(self, key: str, amount: int = 1) -> int:
        k = self._k(key)
        value = (int(self._kv[k]) if self._alive(k) else 0) + amount
        self._kv[k] = str(value).encode()
        return value

    # -- lists -------------------------------------------------------------------------------------
    async def list_push(self, key: str, value: bytes, maxlen: int | None = None) -> None:
        items = self._lists.setdefault(self._k(key), [])
        items.insert(0, bytes(value))
        if maxlen is not None and len(items) > maxlen:
            del items[maxlen:]

    async def list_range(self, key: str, start: int = 0, stop: int = -1) -> list[bytes]:
        items = self._lists.get(self._k(key), [])
        end = None if stop == -1 else stop + 1
        return list(items[start:end])

    # -- sorted sets -------------------------------------------------------------------------------
    async def zadd(self, key: str, score: float, member: bytes) -> None:
        items = self._zsets.setdefault(self._k(key), [])
        for i, (_, m) in enumerate(items):
            if m == member:
                del items[i]
                break
        bisect.insort(items, (float(score), bytes(member)))

    async def zrange_by_score(
        self, key: str, lo: float, hi: float, limit: int | None = None
    ) -> list[tuple[bytes, float]]:
        out = [(m, s) for s, m in self._zsets.get(self._k(key), []) if lo <= s <= hi]
        return out[:limit] if limit is not None else out

    async def zrem_by_score(self, key: str, lo: float, hi: float) -> int:
        k = self._k(key)
        items = self._zsets.get(k, [])
        kept = [(s, m) for s, m in items if not (lo <= s <= hi)]
        removed = len(items) - len(kept)
        if kept:
            self._zsets[k] = kept
        else:
            self._zsets.pop(k, None)
        return removed

    async def zcard(self, key: str) -> int:
        return len(self._zsets.get(self._k(key), []))

    # -- sets --------------------------------------------------------------------------------------
    async def sadd(self, key: str, *members: str) -> int:
        s = self._sets.setdefault(self._k(key), set())
        before = len(s)
        s.update(members)
        return len(s) - before

    async def smembers(self, key: str) -> set[str]:
        return set(self._sets.get(self._k(key), set()))

    # -- streams -----------------------------------------------------------------------------------
    def _stream(self, stream: str, create: bool = True) -> _Stream | None:
        k = self._k(stream)
        if k not in self._streams and create:
            self._streams[k] = _Stream()
        return self._streams.get(k)

    async def stream_add(self, stream: str, fields: dict[str, str], maxlen: int | None = None) -> str:
        s = self._stream(stream)
        assert s is not None
        ms = int(time.time() * 1000)
        new = (ms, 0) if ms > s.last_id[0] else (s.last_id[0], s.last_id[1] + 1)
        s.last_id = new
        entry_id = f"{new[0]}-{new[1]}"
        s.entries[entry_id] = {str(a): str(b) for a, b in fields.items()}
        if maxlen is not None:
            while len(s.entries) > maxlen:
                s.entries.popitem(last=False)
        return entry_id

    async def stream_group_create(self, stream: str, group: str) -> None:
        s = self._stream(stream)
        assert s is not None
        s.groups.setdefault(group, _Group())

    def _group(self, stream: str, group: str) -> tuple[_Stream, _Group]:
        s = self._stream(stream, create=False)
        if s is None or group not in s.groups:
            raise KeyError(f"no consumer group {group!r} on stream {stream!r}")
        return s, s.groups[group]

    async def stream_read_group(
        self, stream: str, group: str, consumer: str, count: int = 10, pending: bool = False
    ) -> list[StreamEntry]:
        s, g = self._group(stream, group)
        now = time.time() * 1000
        out: list[StreamEntry] = []
        if pending:
            for entry_id, (owner, _) in list(g.pending.items()):
                # Redis returns an id with empty fields when the entry was trimmed away; skip it.
                if owner == consumer and len(out) < count and entry_id in s.entries:
                    g.pending[entry_id] = (consumer, now)
                    out.append((entry_id, dict(s.entries[entry_id])))
            return sorted(out, key=lambda e: _parse_id(e[0]))
        for entry_id, fields in s.entries.items():
            if len(out) >= count:
                break
            if _parse_id(entry_id) > g.last:
                g.last = _parse_id(entry_id)
                g.pending[entry_id] = (consumer, now)
                out.append((entry_id, dict(fields)))
        return out

    async def stream_claim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[StreamEntry]:
        s, g = self._group(stream, group)
        now = time.time() * 1000
        out: list[StreamEntry] = []
        for entry_id in sorted(g.pending, key=_parse_id):
            if len(out) >= count:
                break
            _, since = g.pending[entry_id]
            if now - since < min_idle_ms:
                continue
            if entry_id not in s.entries:  # trimmed: Redis drops such ids from the pending list
                del g.pending[entry_id]
                continue
            g.pending[entry_id] = (consumer, now)
            out.append((entry_id, dict(s.entries[entry_id])))
        return out

    async def stream_ack(self, stream: str, group: str, *ids: str) -> int:
        s = self._stream(stream, create=False)
        if s is None or group not in s.groups:
            return 0
        g = s.groups[group]
        return sum(1 for i in ids if g.pending.pop(i, None) is not None)

    async def stream_len(self, stream: str) -> int:
        s = self._stream(stream, create=False)
        return len(s.entries) if s else 0

    async def stream_pending(self, stream: str, group: str) -> int:
        s = self._stream(stream, create=False)
        return len(s.groups[group].pending) if s and group in s.groups else 0

    async def stream_lag(self, stream: str, group: str) -> int:
        s = self._stream(stream, create=False)
        if not s or group not in s.groups:
            return 0
        last = s.groups[group].last
        return sum(1 for i in s.entries if _parse_id(i) > last)

    async def stream_range(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[StreamEntry]:
        s = self._stream(stream, create=False)
        if s is None:
            return []
        lo, hi = _parse_id(start), _parse_id(end)
        out = [(i, dict(f)) for i, f in s.entries.items() if lo <= _parse_id(i) <= hi]
        return out[:count] if count is not None else out

    async def stream_delete(self, stream: str, *ids: str) -> int:
        s = self._stream(stream, create=False)
        if s is None:
            return 0
        return sum(1 for i in ids if s.entries.pop(i, None) is not None)

    async def ping(self) -> bool:
        return True

    # -- used by the Redis fallback to hand writes back once Redis answers again --------------------
    def drain(self) -> dict[str, Any]:
        """Everything written so far (prefix stripped), and forget it."""
        n = len(self.prefix)
        now = time.time()
        kv = {}
        for k, v in self._kv.items():
            exp = self._expiry.get(k)
            if exp is None or exp > now:
                kv[k[n:]] = (v, None if exp is None else exp - now)
        out = {
            "kv": kv,
            "lists": {k[n:]: list(v) for k, v in self._lists.items()},
            "zsets": {k[n:]: list(v) for k, v in self._zsets.items()},
            "sets": {k[n:]: set(v) for k, v in self._sets.items()},
            "streams": {k[n:]: (list(s.entries.values()), list(s.groups)) for k, s in self._streams.items()},
        }
        self.__init__(self.prefix)  # type: ignore[misc]
        return out

    def is_empty(self) -> bool:
        return not (self._kv or self._lists or self._zsets or self._sets or self._streams)
