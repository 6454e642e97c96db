"""Redis failures: the queue survives a restart with AOF, and an outage degrades to memory without
failing the miner, handing the fallback's writes back when Redis returns."""

from __future__ import annotations

import hashlib

import numpy as np

from roadminer.core.metrics import REGISTRY
from roadminer.imaging.decode import encode_jpeg
from roadminer.miner.batcher import Answer
from roadminer.state.backends.memory import MemoryStore
from roadminer.state.backends.redis_store import RedisStore
from roadminer.state.backends.resilient import ResilientStore
from roadminer.state.layer import RequestInfo, StateLayer
from roadminer.state.queue import HardExampleQueue


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_jpeg(rng.integers(0, 255, size=(24, 24, 3), dtype=np.uint8))


async def test_queue_survives_redis_restart_with_aof(make_redis) -> None:  # type: ignore[no-untyped-def]
    server = make_redis(appendonly=True)
    store = RedisStore(server.url)
    q = HardExampleQueue(store)
    imgs = [_jpeg(i) for i in range(30)]
    ids = [await q.enqueue(img, ["low_margin"], 0.5, "colour", label=i % 2) for i, img in enumerate(imgs)]
    assert all(ids)
    done = await q.claim("t1", count=10)
    assert await q.ack(*[e.entry_id for e in done]) == 10
    in_flight = await q.claim("t1", count=5)  # read but not acknowledged when the server dies
    await store.close()

    server.kill()  # SIGKILL: no graceful shutdown, only the append-only file remains
    server.start()

    store = RedisStore(server.url)
    q = HardExampleQueue(store)
    stats = await q.stats()
    assert stats["entries"] == 30 and stats["pending"] == 5 and stats["undelivered"] == 15
    redelivered = await q.claim("t1", count=100)
    acked_ids = {e.entry_id for e in done}
    got_ids = [e.entry_id for e in redelivered]
    assert not acked_ids & set(got_ids)  # nothing acknowledged comes back
    assert set(got_ids) == set(ids) - acked_ids  # and nothing unacknowledged is lost
    assert {e.entry_id for e in in_flight} <= set(got_ids)
    for e in redelivered:
        assert await q.image(e.image_hash) is not None
    await store.close()


def _metric(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels or None)
    return float(value or 0.0)


async def test_outage_falls_back_to_memory_and_hands_back(make_redis) -> None:  # type: ignore[no-untyped-def]
    server = make_redis(appendonly=True)
    store = ResilientStore(
        RedisStore(server.url, socket_timeout=0.5), MemoryStore(), min_backoff_s=0.05, max_backoff_s=0.2
    )
    layer = StateLayer(store)
    wrong = Answer(prob=0.9, tier="colour", batch_size=1, queue_ms=0.0, model_ms=1.0)

    async def observe(i: int) -> list[str]:
        img = _jpeg(100 + i)
        info = RequestInfo(validator="v", image_hash=hashlib.sha256(img).hexdigest(), payload=img, label=0)
        return await layer.observe(info, wrong, {"colour": 0.9})

    assert await observe(0) == ["known_error"]
    await layer.cache.put("h0", "m1", 0.9, "colour")
    assert _metric("roadminer_state_backend_up", backend="redis") == 1.0
    before = _metric("roadminer_state_fallbacks_total")

    server.kill()
    for i in range(1, 6):  # the miner keeps answering and recording while Redis is gone
        assert await observe(i) == ["known_error"]
    await layer.cache.put("h1", "m1", 0.8, "colour")
    assert (await layer.cache.get("h1", "m1")) is not None
    assert layer.errors == 0 and not store.up
    assert _metric("roadminer_state_backend_up", backend="redis") == 0.0
    assert _metric("roadminer_state_fallbacks_total") > before

    server.start()
    assert await store.check()  # reconnect and hand back what memory held
    assert store.up and store.fallback.is_empty()
    assert _metric("roadminer_state_backend_up", backend="redis") == 1.0
    direct = RedisStore(server.url)
    q = HardExampleQueue(direct)
    entries = await q.entries()
    assert len(entries) == 6  # one before the outage, five written to memory during it
    assert all([await q.image(e.image_hash) is not None for e in entries])
    assert len(await layer.sessions.recent("v")) == 6
    assert (await layer.cache.get("h1", "m1")) is not None and (await layer.cache.get("h0", "m1")) is not None
    assert await observe(6) == ["known_error"]
    assert len(await q.entries()) == 7
    await direct.close()
    await store.close()
