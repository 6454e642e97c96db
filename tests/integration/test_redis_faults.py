"""Redis faults under load: the miner's state lives in Redis (append-only file, fsync always) and Redis is
SIGKILLed while signed validators keep calling.

- Answers continue through the outage (the state falls back to memory, reconnects with backoff) and
  the metrics show it (``roadminer_state_backend_up`` 1 -> 0 -> 1, fallbacks counted, /health).
- After the restart nothing acknowledged is lost: every hard example queued before the kill is read
  back from the AOF, those queued during the outage are handed back, and so are the validator scores
  (scored outcomes and their reward history).
- A SN72 nonce accepted during the outage cannot be replayed once Redis (holding an older nonce for the
  same endpoint) is back.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from roadminer.core.metrics import REGISTRY
from roadminer.imaging.decode import encode_jpeg, to_b64
from roadminer.protocol import sn72
from roadminer.state.backends.memory import MemoryStore
from roadminer.state.backends.redis_store import RedisStore
from roadminer.state.backends.resilient import ResilientStore
from roadminer.state.nonce import NonceStore
from roadminer.state.queue import HardExampleQueue
from testkit.miner import ALICE, BOB, CHARLIE, MINER, run_miner, scene, settings_for, sn72_call

PREFIX = "rmfault:"


def _distinct_images(n: int) -> list[str]:
    base = scene(0)
    out = []
    for i in range(n):
        img = base.copy()
        img[0, :4, :] = np.frombuffer(i.to_bytes(12, "big"), np.uint8).reshape(4, 3)
        out.append(to_b64(encode_jpeg(img, quality=90)))
    return out


def _gauge(name: str, **labels: str) -> float:
    return float(REGISTRY.get_sample_value(name, labels or None) or 0.0)


async def _wait_for(cond: Any, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await cond():
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.slow
async def test_redis_killed_under_load(tmp_path: Path, make_redis: Any) -> None:
    server = make_redis(appendonly=True)
    settings = settings_for(
        tmp_path,
        guards={"rate_limit_per_minute": 1_000_000, "rate_limit_burst": 1_000_000},
        state={
            "backend": "redis",
            "redis_url": server.url,
            "key_prefix": PREFIX,
            "redis_socket_timeout_s": 0.5,
            "reconnect_max_backoff_s": 0.4,
            "queue_low_margin": 0.5,  # every answer is a hard example: each one must survive
        },
    )
    images = _distinct_images(2500)  # distinct images, distinct queue entries
    miner = await run_miner(settings)
    state = miner.backend.state
    assert state is not None and isinstance(state.store, ResilientStore)
    store: ResilientStore = state.store
    fallbacks_before = _gauge("roadminer_state_fallbacks_total")
    codes: Counter[int] = Counter()
    answered: dict[str, str] = {}
    phase = {"name": "before"}
    by_phase: Counter[str] = Counter()
    stop = asyncio.Event()
    next_image = iter(range(len(images)))

    async def client(signer: Any, k: int, session: aiohttp.ClientSession) -> None:
        uid = f"fault-{k}"
        while not stop.is_set():
            try:
                i = next(next_image)
            except StopIteration:
                return
            p, code, _ = await sn72_call(session, miner, signer, images[i], uuid=uid)
            codes[code] += 1
            by_phase[phase["name"]] += 1
            if code == 200 and p is not None:
                answered[images[i]] = phase["name"]

    try:
        async with aiohttp.ClientSession() as s:
            tasks = [asyncio.create_task(client(v, k, s)) for k, v in enumerate([ALICE, BOB, CHARLIE] * 2)]
            # validator scores acknowledged before the outage (scored challenges with known labels)
            for i in range(5):
                await state.rewards.record_outcome(ALICE.ss58_address, 0.9 if i % 2 else 0.2, i % 2)
            await asyncio.sleep(1.0)
            assert store.up and _gauge("roadminer_state_backend_up", backend="redis") == 1.0

            server.kill()  # SIGKILL: only the append-only file remains
            phase["name"] = "outage"
            assert await _wait_for(lambda: _false(store.up), 10), "the outage was never noticed"
            assert _gauge("roadminer_state_backend_up", backend="redis") == 0.0
            for _ in range(3):  # scores recorded while Redis is gone (memory fallback)
                await state.rewards.record_outcome(ALICE.ss58_address, 0.7, 1)
            async with s.get(miner.url + "/health") as r:
                health = await r.json()
            assert health["state"]["backend"]["up"] is False
            await asyncio.sleep(1.0)

            await asyncio.to_thread(server.start)  # same port, replays the AOF
            phase["name"] = "after"
            assert await _wait_for(lambda: _true(store.up), 15), f"no reconnection {dict(by_phase)}"
            assert _gauge("roadminer_state_backend_up", backend="redis") == 1.0
            await asyncio.sleep(0.8)
            stop.set()
            await asyncio.gather(*tasks)
        # let the recording of the last answers finish
        assert await _wait_for(lambda: _true(not state._pending), 10)
    finally:
        stop.set()
        await miner.stop()

    print(f"\n[redis faults] answers by phase {dict(by_phase)}, codes {dict(codes)}, "
          f"fallback ops {_gauge('roadminer_state_fallbacks_total') - fallbacks_before:.0f}")
    assert set(codes) == {200}, codes  # no request failed because Redis died
    assert by_phase["outage"] >= 5 and by_phase["after"] >= 5
    assert _gauge("roadminer_state_fallbacks_total") > fallbacks_before
    assert state.errors == 0 and state.dropped == 0

    # A fresh client straight to Redis: everything acknowledged is there.
    direct = RedisStore(server.url, prefix=PREFIX)
    try:
        q = HardExampleQueue(direct)
        entries = await q.entries()
        import base64
        import hashlib

        want = {hashlib.sha256(base64.b64decode(b)).hexdigest(): ph for b, ph in answered.items()}
        got = {e.image_hash for e in entries}
        missing = Counter(ph for h, ph in want.items() if h not in got)
        assert not missing, f"acknowledged hard examples lost, by phase: {dict(missing)} of {len(want)}"
        for e in entries[:: max(1, len(entries) // 20)]:
            assert await q.image(e.image_hash) is not None
        outcomes = await direct.list_range(f"outcomes:{ALICE.ss58_address}")
        assert len(outcomes) == 8  # 5 before the kill (from the AOF) + 3 handed back from memory
        from roadminer.state.history import MetricHistory

        rewards = await MetricHistory(direct).series("reward", validator=ALICE.ss58_address)
        assert len(rewards) == 8
    finally:
        await direct.close()


async def _true(v: bool) -> bool:
    return bool(v)


async def _false(v: bool) -> bool:
    return not v


async def test_nonce_accepted_during_outage_is_not_replayable_after(make_redis: Any) -> None:
    server = make_redis(appendonly=True)
    store = ResilientStore(
        RedisStore(server.url, prefix=PREFIX, socket_timeout=0.5), MemoryStore(prefix=PREFIX), 0.05, 0.2
    )
    nonces = NonceStore(store)

    async def check(nonce: int) -> str:
        _, headers, _ = sn72.build_request(ALICE, MINER.ss58_address, "127.0.0.1", 1, "", uuid="u1", nonce=nonce)
        try:
            await sn72.check_request(sn72.parse_headers(headers), MINER.ss58_address, nonces)
        except sn72.SynapseError as e:
            return e.message
        return "ok"

    try:
        n1 = time.time_ns()
        assert await check(n1) == "ok"  # recorded in Redis (and in its AOF)
        server.kill()
        n2 = n1 + 1_000
        assert await check(n2) == "ok"  # accepted while Redis is down: recorded in memory
        assert not store.up
        server.start()  # Redis comes back holding n1 for this endpoint
        assert await store.check() and store.up
        assert "newer one" in await check(n2)  # the outage's nonce was handed back: replay refused
        assert await check(n2 + 1) == "ok"
    finally:
        await store.close()
