"""The same state suite against the in-memory store, Redis, and Redis behind the outage fallback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

from roadminer.state.backends.memory import MemoryStore
from roadminer.state.backends.redis_store import RedisStore
from roadminer.state.backends.resilient import ResilientStore
from roadminer.state.history import ChainSnapshot, MetricHistory, RewardTracker, rolling_metrics
from roadminer.state.sessions import RequestRecord, ResultCache, SessionStore
from roadminer.state.store import StateStore

BACKENDS = ["memory", "redis", "resilient"]


async def _make(kind: str, request: pytest.FixtureRequest) -> StateStore:
    if kind == "memory":
        return MemoryStore(prefix="t:")
    url = request.getfixturevalue("redis_url")
    if kind == "redis":
        return RedisStore(url, prefix="t:")
    return ResilientStore(RedisStore(url, prefix="t:"), MemoryStore(prefix="t:"))


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    s = await _make(request.param, request)
    yield s
    await s.close()


async def test_key_value_and_ttl(store: StateStore) -> None:
    blob = bytes(range(256)) * 4  # binary safe (KV-cache blobs are safetensors bytes)
    assert await store.get_bytes("a") is None
    await store.set_bytes("a", blob)
    assert await store.get_bytes("a") == blob
    assert await store.ttl("a") is None
    await store.set_bytes("short", b"x", ttl=0.15)
    assert await store.exists("short")
    ttl = await store.ttl("short")
    assert ttl is not None and 0 < ttl <= 0.15
    await asyncio.sleep(0.3)
    assert await store.get_bytes("short") is None
    assert not await store.exists("short")
    assert await store.delete("a", "missing") == 1
    await store.set_json("j", {"b": [1, 2], "a": None})
    assert await store.get_json("j") == {"a": None, "b": [1, 2]}


async def test_set_nx_set_if_greater_incr(store: StateStore) -> None:
    assert await store.set_nx("n", b"1", ttl=10)
    assert not await store.set_nx("n", b"2", ttl=10)
    assert await store.get_bytes("n") == b"1"
    assert await store.set_if_greater("nonce", 100)
    assert not await store.set_if_greater("nonce", 100)
    assert not await store.set_if_greater("nonce", 99)
    assert await store.set_if_greater("nonce", 101, ttl=30)
    assert await store.get_bytes("nonce") == b"101"
    assert await store.incr("c") == 1
    assert await store.incr("c", 5) == 6


async def test_lists_sets_sorted_sets(store: StateStore) -> None:
    for i in range(7):
        await store.list_push("l", str(i).encode(), maxlen=5)
    assert await store.list_range("l") == [b"6", b"5", b"4", b"3", b"2"]
    assert await store.list_range("l", 0, 1) == [b"6", b"5"]
    assert await store.sadd("s", "a", "b") == 2
    assert await store.sadd("s", "b", "c") == 1
    assert await store.smembers("s") == {"a", "b", "c"}
    for t in (3.0, 1.0, 2.0, 5.0):
        await store.zadd("z", t, f"m{t}".encode())
    assert [s for _, s in await store.zrange_by_score("z", 1.5, 10)] == [2.0, 3.0, 5.0]
    assert len(await store.zrange_by_score("z", 0, 10, limit=2)) == 2
    assert await store.zrem_by_score("z", 0, 2.5) == 2
    assert await store.zcard("z") == 2


async def test_stream_consumer_group(store: StateStore) -> None:
    await store.stream_group_create("st", "g")
    await store.stream_group_create("st", "g")  # idempotent
    ids = [await store.stream_add("st", {"i": str(i)}) for i in range(5)]
    assert ids == sorted(ids, key=lambda x: tuple(map(int, x.split("-"))))
    assert await store.stream_len("st") == 5
    assert await store.stream_lag("st", "g") == 5
    first = await store.stream_read_group("st", "g", "c1", count=3)
    assert [f["i"] for _, f in first] == ["0", "1", "2"]
    assert await store.stream_pending("st", "g") == 3
    assert await store.stream_lag("st", "g") == 2
    # c1 re-reads its own unacknowledged entries; c2 does not see them as new
    again = await store.stream_read_group("st", "g", "c1", count=10, pending=True)
    assert [i for i, _ in again] == ids[:3]
    rest = await store.stream_read_group("st", "g", "c2", count=10)
    assert [f["i"] for _, f in rest] == ["3", "4"]
    assert await store.stream_ack("st", "g", ids[0], ids[1]) == 2
    assert await store.stream_ack("st", "g", ids[0]) == 0
    assert await store.stream_pending("st", "g") == 3
    # c3 takes over what c1 abandoned
    await asyncio.sleep(0.05)
    claimed = await store.stream_claim("st", "g", "c3", min_idle_ms=20, count=10)
    assert ids[2] in [i for i, _ in claimed]
    assert await store.stream_read_group("st", "g", "c1", pending=True) == []
    assert [i for i, _ in await store.stream_range("st")] == ids
    assert await store.stream_delete("st", ids[0]) == 1
    await store.stream_add("st", {"i": "5"}, maxlen=3)
    assert [f["i"] for _, f in await store.stream_range("st")] == ["3", "4", "5"]


async def test_sessions_and_result_cache(store: StateStore) -> None:
    sessions = SessionStore(store, max_len=3)
    for i in range(5):
        await sessions.record(
            "vA", RequestRecord(image_hash=f"h{i}", prob=0.1 * i + 0.05, tier="colour", latency_ms=float(i))
        )
    await sessions.record("vB", RequestRecord(image_hash="x", prob=0.9, tier="clf", latency_ms=2.0, label=1))
    recent = await sessions.recent("vA")
    assert [r.image_hash for r in recent] == ["h4", "h3", "h2"]
    assert (await sessions.recent("vB"))[0].label == 1
    assert await sessions.validators() == {"vA", "vB"}
    cache = ResultCache(store, ttl_s=0.2)
    assert await cache.get("abc", "v1") is None
    await cache.put("abc", "v1", 0.83, "clf")
    hit = await cache.get("abc", "v1")
    assert hit is not None and hit.prob == pytest.approx(0.83) and hit.tier == "clf"
    assert await cache.get("abc", "v2") is None  # a new model version never sees old answers
    await asyncio.sleep(0.3)
    assert await cache.get("abc", "v1") is None


async def test_history_series_retention_and_chain(store: StateStore) -> None:
    h = MetricHistory(store, retention_s=100.0)
    now = time.time()
    for dt, v in ((-500, 0.1), (-50, 0.2), (-10, 0.3), (-10, 0.3)):
        await h.add("reward", v, t=now + dt, validator="v1")
    await h.add("reward", 0.9, t=now, validator="v2")
    pts = await h.series("reward", validator="v1")
    assert [p.value for p in pts] == [0.2, 0.3, 0.3]  # the 500 s old point fell out of the retention
    assert [p.value for p in await h.series("reward", since=now - 20, validator="v1")] == [0.3, 0.3]
    assert set(await h.series_by_validator("reward")) == {"v1", "v2"}
    assert (await h.latest("reward", validator="v2")).value == 0.9  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        await h.add("reward", float("nan"))
    tracker = RewardTracker(store, h)
    await tracker.record_chain(
        ChainSnapshot(incentive=0.01, trust=0.9, emission=1.5, weights={"v1": 0.3}, t=now)
    )
    assert (await h.series("chain.incentive"))[0].value == 0.01
    assert (await h.series("chain.weight", validator="v1"))[0].value == 0.3
    assert {"reward", "chain.incentive", "chain.trust", "chain.emission", "chain.weight"} <= await h.names()
    snap = await h.to_json()
    assert snap["chain.weight"]["v1"][0][1] == 0.3


async def test_reward_tracker_matches_reference_formula(store: StateStore) -> None:
    tracker = RewardTracker(store)
    labels = [i % 2 for i in range(30)]
    probs = [0.9 if y else 0.2 for y in labels]
    probs[3] = 0.1  # one mistake (label 1 -> answered 0)
    probs[29] = 0.5  # exactly 0.5 counts as "no roadwork": label 1 -> mistake
    m: dict[str, float] = {}
    for p, y in zip(probs, labels, strict=True):
        m = await tracker.record_outcome("v", p, y)
    expected = rolling_metrics(probs, labels)
    assert m["mcc"] == pytest.approx(expected["mcc"])
    assert m["accuracy"] == pytest.approx(0.9)  # last 10: one mistake
    assert m["reward"] == pytest.approx((0.5 * expected["mcc"] + 0.5 * 0.9) ** 3)
    m = await tracker.record_outcome("v", None, 1)  # no answer: reward 0, counts in the window
    assert m["reward"] == 0.0
    assert len(await tracker.history.series("reward", validator="v")) == 31
    assert await tracker.reward_trend("v") is not None


def test_rolling_metrics_edge_cases() -> None:
    assert rolling_metrics([0.9] * 5, [1] * 5)["mcc"] == 0.0  # constant labels
    assert rolling_metrics([], [])["reward"] == 0.0
    m = rolling_metrics([0.9, 0.1, 0.8, 0.2], [1, 0, 1, 0])
    assert m["mcc"] == pytest.approx(1.0) and m["reward"] == pytest.approx(1.0)
    inverted = rolling_metrics([0.1, 0.9, 0.2, 0.8], [1, 0, 1, 0])
    assert inverted["mcc"] == 0.0  # max(0, mcc)


async def _transcript(store: StateStore) -> list[object]:
    """A scripted mix of operations; the transcript (ids aside) must be identical on every backend."""
    out: list[object] = []
    out.append(await store.set_nx("k", b"v"))
    out.append(await store.set_nx("k", b"w"))
    out.append(await store.get_bytes("k"))
    out.append([await store.set_if_greater("g", n) for n in (5, 3, 7, 7)])
    for i in range(4):
        await store.list_push("l", json.dumps(i).encode(), maxlen=3)
    out.append(await store.list_range("l"))
    await store.zadd("z", 2, b"b")
    await store.zadd("z", 1, b"a")
    await store.zadd("z", 2, b"b")
    out.append(await store.zrange_by_score("z", 0, 5))
    await store.stream_group_create("s", "g")
    for i in range(4):
        await store.stream_add("s", {"n": str(i)}, maxlen=3)
    got = await store.stream_read_group("s", "g", "c", count=2)
    out.append([f for _, f in got])
    out.append(await store.stream_ack("s", "g", got[0][0]))
    out.append(
        (await store.stream_len("s"), await store.stream_pending("s", "g"), await store.stream_lag("s", "g"))
    )
    out.append(await store.delete("k", "l", "z", "s", "nope"))
    out.append([await store.exists(k) for k in ("k", "l", "z", "s", "g")])
    return out


async def test_parity_memory_vs_redis(redis_url: str) -> None:
    mem = MemoryStore(prefix="p:")
    red = RedisStore(redis_url, prefix="p:")
    try:
        assert await _transcript(mem) == await _transcript(red)
    finally:
        await red.close()


async def test_memory_store_sweeps_keys_never_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from roadminer.state.backends import memory as memory_store

    store = MemoryStore(prefix="t:")
    for i in range(100):  # e.g. one btauth nonce per request, never looked up again
        await store.set_nx(f"nonce:{i}", b"1", ttl=0.01)
    await store.set_bytes("keep", b"v")
    await asyncio.sleep(0.02)
    monkeypatch.setattr(memory_store, "SWEEP_INTERVAL_S", 0.0)
    store._next_sweep = 0.0
    await store.set_bytes("other", b"v", ttl=60)
    assert set(store._kv) == {"t:keep", "t:other"} and set(store._expiry) == {"t:other"}


class _SlowPrimary(MemoryStore):
    backend = "slow"

    async def set_nx(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        await asyncio.sleep(0.05)
        return await super().set_nx(key, value, ttl)


async def test_hand_back_survives_a_cancelled_caller() -> None:
    from roadminer.state.store import StateError

    primary = _SlowPrimary(prefix="t:")
    store = ResilientStore(primary, MemoryStore(prefix="t:"))
    store._mark_down(StateError("outage"))
    for i in range(3):  # written to memory during the outage
        await store.fallback.set_bytes(f"k{i}", b"v")
    store._next_try = 0.0
    with pytest.raises(TimeoutError):  # a request's look-up budget runs out mid hand-back
        await asyncio.wait_for(store.get_bytes("k0"), 0.01)
    assert store._recovery is not None
    await store._recovery
    assert store.up and store.fallback.is_empty()
    assert [await primary.get_bytes(f"k{i}") for i in range(3)] == [b"v"] * 3
