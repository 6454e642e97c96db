"""Redis implementation of the state primitives (``redis.asyncio``). Connection failures surface as
``StateError`` so that the fallback wrapper can switch to memory."""

from __future__ import annotations

import contextlib
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from roadminer.state.store import StateError, StateStore, StreamEntry

# Integers are compared exactly (Lua numbers are doubles: nanosecond nonces would differ only past
# 2^53 and compare equal), as decimal strings when both are non-negative.
_SET_IF_GREATER = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local a, b = cur, ARGV[1]
  local ge
  if string.sub(a, 1, 1) ~= '-' and string.sub(b, 1, 1) ~= '-' then
    ge = (#a > #b) or (#a == #b and a >= b)
  else
    ge = tonumber(a) >= tonumber(b)
  end
  if ge then return 0 end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""

_CONN_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


def _ms(ttl: float | None) -> int | None:
    return None if ttl is None or ttl <= 0 else max(1, int(ttl * 1000))


def _decode_fields(fields: dict[Any, Any] | None) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (v.decode() if isinstance(v, bytes) else str(v))
        for k, v in (fields or {}).items()
    }


def _entries(raw: list[Any]) -> list[StreamEntry]:
    out: list[StreamEntry] = []
    for entry_id, fields in raw or []:
        if fields is None:  # id of an entry trimmed away while pending
            continue
        out.append(
            (entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id), _decode_fields(fields))
        )
    return out


class RedisStore(StateStore):
    backend = "redis"

    def __init__(
        self,
        url: str,
        prefix: str = "roadminer:",
        socket_timeout: float = 1.0,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.client = client or aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            health_check_interval=30,
            retry_on_timeout=False,
        )
        self._set_if_greater = self.client.register_script(_SET_IF_GREATER)

    async def reset_connections(self) -> None:
        """Drop pooled connections: after a server restart they are dead sockets whose first use fails."""
        with contextlib.suppress(_CONN_ERRORS):
            await self.client.connection_pool.disconnect()

    def _k(self, key: str) -> str:
        return self.prefix + key

    async def _run(self, coro: Any) -> Any:
        try:
            return await coro
        except _CONN_ERRORS as e:
            raise StateError(f"redis unavailable: {type(e).__name__}: {e}") from e

    # -- key/value -------------------------------------------------------------------------------
    async def get_bytes(self, key: str) -> bytes | None:
        return await self._run(self.client.get(self._k(key)))

    async def set_bytes(self, key: str, value: bytes, ttl: float | None = None) -> None:
        await self._run(self.client.set(self._k(key), value, px=_ms(ttl)))

    async def set_nx(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        return bool(await self._run(self.client.set(self._k(key), value, px=_ms(ttl), nx=True)))

    async def set_if_greater(self, key: str, value: int, ttl: float | None = None) -> bool:
        res = await self._run(self._set_if_greater(keys=[self._k(key)], args=[int(value), _ms(ttl) or 0]))
        return bool(res)

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(await self._run(self.client.delete(*[self._k(k) for k in keys])))

    async def exists(self, key: str) -> bool:
        return bool(await self._run(self.client.exists(self._k(key))))

    async def ttl(self, key: str) -> float | None:
        ms = await self._run(self.client.pttl(self._k(key)))
        return None if ms is None or ms < 0 else ms / 1000.0

    async def incr(self, key: str, amount: int = 1) -> int:
        return int(await self._run(self.client.incrby(self._k(key), amount)))

    # -- lists -------------------------------------------------------------------------------------
    async def list_push(self, key: str, value: bytes, maxlen: int | None = None) -> None:
        k = self._k(key)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.lpush(k, value)
            if maxlen is not None:
                pipe.ltrim(k, 0, maxlen - 1)
            await self._run(pipe.execute())

    async def list_range(self, key: str, start: int = 0, stop: int = -1) -> list[bytes]:
        return list(await self._run(self.client.lrange(self._k(key), start, stop)))

    # -- sorted sets -------------------------------------------------------------------------------
    async def zadd(self, key: str, score: float, member: bytes) -> None:
        await self._run(self.client.zadd(self._k(key), {member: float(score)}))

    async def zrange_by_score(
        self, key: str, lo: float, hi: float, limit: int | None = None
    ) -> list[tuple[bytes, float]]:
        kw: dict[str, Any] = {"start": 0, "num": limit} if limit is not None else {}
        rows = await self._run(self.client.zrangebyscore(self._k(key), lo, hi, withscores=True, **kw))
        return [(m, float(s)) for m, s in rows]

    async def zrem_by_score(self, key: str, lo: float, hi: float) -> int:
        return int(await self._run(self.client.zremrangebyscore(self._k(key), lo, hi)))

    async def zcard(self, key: str) -> int:
        return int(await self._run(self.client.zcard(self._k(key))))

    # -- sets --------------------------------------------------------------------------------------
    async def sadd(self, key: str, *members: str) -> int:
        if not members:
            return 0
        return int(await self._run(self.client.sadd(self._k(key), *members)))

    async def smembers(self, key: str) -> set[str]:
        raw = await self._run(self.client.smembers(self._k(key)))
        return {m.decode() if isinstance(m, bytes) else str(m) for m in raw}

    # -- streams -----------------------------------------------------------------------------------
    async def stream_add(self, stream: str, fields: dict[str, str], maxlen: int | None = None) -> str:
        entry_id = await self._run(
            self.client.xadd(self._k(stream), fields, maxlen=maxlen, approximate=False)
        )
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def stream_group_create(self, stream: str, group: str) -> None:
        try:
            await self._run(self.client.xgroup_create(self._k(stream), group, id="0", mkstream=True))
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def stream_read_group(
        self, stream: str, group: str, consumer: str, count: int = 10, pending: bool = False
    ) -> list[StreamEntry]:
        k = self._k(stream)
        try:
            res = await self._run(
                self.client.xreadgroup(group, consumer, {k: "0" if pending else ">"}, count=count)
            )
        except ResponseError as e:
            if "NOGROUP" in str(e):
                raise KeyError(f"no consumer group {group!r} on stream {stream!r}") from None
            raise
        return _entries(res[0][1]) if res else []

    async def stream_claim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[StreamEntry]:
        res = await self._run(
            self.client.xautoclaim(self._k(stream), group, consumer, min_idle_ms, start_id="0-0", count=count)
        )
        return _entries(res[1]) if res else []

    async def stream_ack(self, stream: str, group: str, *ids: str) -> int:
        if not ids:
            return 0
        return int(await self._run(self.client.xack(self._k(stream), group, *ids)))

    async def stream_len(self, stream: str) -> int:
        return int(await self._run(self.client.xlen(self._k(stream))))

    async def stream_pending(self, stream: str, group: str) -> int:
        try:
            info = await self._run(self.client.xpending(self._k(stream), group))
        except ResponseError:
            return 0
        return int(info["pending"])

    async def stream_lag(self, stream: str, group: str) -> int:
        k = self._k(stream)
        try:
            groups = await self._run(self.client.xinfo_groups(k))
        except ResponseError:
            return 0
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if name != group:
                continue
            if g.get("lag") is not None:
                return int(g["lag"])
            last = g["last-delivered-id"]
            last = last.decode() if isinstance(last, bytes) else str(last)
            rows = await self._run(self.client.xrange(k, min=f"({last}" if last != "0-0" else "-", max="+"))
            return len(rows)
        return 0

    async def stream_range(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[StreamEntry]:
        return _entries(await self._run(self.client.xrange(self._k(stream), min=start, max=end, count=count)))

    async def stream_delete(self, stream: str, *ids: str) -> int:
        if not ids:
            return 0
        return int(await self._run(self.client.xdel(self._k(stream), *ids)))

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except _CONN_ERRORS:
            return False

    async def close(self) -> None:
        await self.client.aclose()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "url": self.url.split("@")[-1]}
