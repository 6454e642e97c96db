"""Bounded load tests on loopback: many concurrent signed validators far above the mainnet rate.

- Below saturation (the real colour cascade, default guards): every request is answered (no errors),
  throughput and p50/p99 latency are reported.
- Above saturation (a model of fixed capacity, a small in-flight budget): the miner sheds with a clean
  503 and keeps serving the high-stake validators first; nothing else goes wrong.

Both phases stop by themselves (request count and wall-clock bounds). Figures: ``pytest -s -m slow``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from roadminer.chain.local import LocalChainView
from roadminer.core.config import Settings
from roadminer.miner.run import RunningMiner
from roadminer.protocol import sn72
from roadminer.protocol.keys import HotkeySigner
from testkit.miner import MINER, SlowPredictor, jpeg_b64, run_miner

pytestmark = pytest.mark.slow

N_VALIDATORS = 24
IMAGES = [jpeg_b64(seed) for seed in range(16)]


def _validators() -> list[tuple[HotkeySigner, float]]:
    """24 permitted validators with stakes from 1 k to 200 k (log-spaced), highest first."""
    stakes = np.geomspace(200_000, 1_000, N_VALIDATORS)
    return [(HotkeySigner.from_uri(f"//LoadValidator{i}"), float(s)) for i, s in enumerate(stakes)]


VALIDATORS = _validators()


def _settings(tmp_path: Path, **over: dict[str, Any]) -> Settings:
    chain = LocalChainView.write(
        tmp_path / "chain.yaml",
        [
            {"uid": i, "uri": f"//LoadValidator{i}", "stake": stake, "validator_permit": True}
            for i, (_, stake) in enumerate(VALIDATORS)
        ]
        + [{"uid": N_VALIDATORS, "uri": "//Eve", "stake": 0.0, "validator_permit": False}],
    )
    base: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "chain": {"network": "local", "local_config": str(chain)},
        # mainnet validators send a few requests a minute; this test sends hundreds a second
        "guards": {"min_stake": 500.0, "rate_limit_per_minute": 1_000_000, "rate_limit_burst": 1_000_000},
        "state": {"result_cache_ttl_s": 0},  # every request reaches the model
    }
    for section, values in over.items():
        base.setdefault(section, {}).update(values)
    return Settings(**base)


@dataclass
class LoadStats:
    codes: Counter[int] = field(default_factory=Counter)
    by_class: dict[str, Counter[int]] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    bad: list[str] = field(default_factory=list)

    def add(self, cls: str, code: int, ms: float, problem: str | None) -> None:
        self.codes[code] += 1
        self.by_class.setdefault(cls, Counter())[code] += 1
        if code == 200:
            self.latencies_ms.append(ms)
        if problem:
            self.bad.append(problem)

    @property
    def total(self) -> int:
        return sum(self.codes.values())

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms or [0.0])
        return {
            "requests": self.total,
            "ok": self.codes[200],
            "throughput_rps": round(self.codes[200] / max(self.wall_s, 1e-9), 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "error_rate": round(1 - self.codes[200] / max(self.total, 1), 4),
            "codes": dict(self.codes),
            "by_class": {k: dict(v) for k, v in self.by_class.items()},
            "wall_s": round(self.wall_s, 2),
        }


async def _one(
    session: aiohttp.ClientSession, miner: RunningMiner, signer: HotkeySigner, uid: str, i: int
) -> tuple[int, float, str | None]:
    url, headers, body = sn72.build_request(
        signer, miner.hotkeys[0], "127.0.0.1", miner.ports[0], IMAGES[i % len(IMAGES)], uuid=uid
    )
    t0 = time.perf_counter()
    async with session.post(url, headers=headers, data=json.dumps(body)) as r:
        raw = await r.read()
        ms = (time.perf_counter() - t0) * 1000
        p, code, msg = sn72.parse_response(r.status, r.headers, raw)
    problem = None
    if code == 200 and (p is None or not 0.0 < p < 1.0):
        problem = f"200 without a valid prediction: {raw[:200]!r}"
    elif code == 503 and "Service unavailable" not in msg:
        problem = f"503 without the shedding message: {msg}"
    return code, ms, problem


async def _drive(
    miner: RunningMiner,
    clients: list[tuple[str, HotkeySigner]],
    max_requests: int,
    max_seconds: float,
    backoff_503_s: float = 0.0,
) -> LoadStats:
    """One closed-loop client per entry (class label, signer), each with its own Dendrite uuid."""
    stats = LoadStats()
    deadline = time.perf_counter() + max_seconds
    sent = 0
    conn = aiohttp.TCPConnector(limit=len(clients) + 4)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def client(cls: str, signer: HotkeySigner, k: int) -> None:
            nonlocal sent
            uid = f"load-{cls}-{k}"
            while sent < max_requests and time.perf_counter() < deadline:
                sent += 1
                try:
                    code, ms, problem = await _one(session, miner, signer, uid, sent)
                except (aiohttp.ClientError, TimeoutError) as e:
                    code, ms, problem = 0, 0.0, f"transport error: {e!r}"
                stats.add(cls, code, ms, problem)
                if code == 503 and backoff_503_s:
                    await asyncio.sleep(backoff_503_s)

        t0 = time.perf_counter()
        await asyncio.gather(*(client(cls, s, k) for k, (cls, s) in enumerate(clients)))
        stats.wall_s = time.perf_counter() - t0
    return stats


async def test_load_below_saturation_has_no_errors(tmp_path: Path) -> None:
    miner = await run_miner(_settings(tmp_path), signers=[(0, MINER)])
    try:
        clients = [("validator", VALIDATORS[i % N_VALIDATORS][0]) for i in range(24)]
        await _drive(miner, clients, max_requests=48, max_seconds=10)  # warm-up
        # Bounded by count, not by time: throughput is the bench's business (roadminer bench), and a shared
        # CPU must not turn a correctness check into a speed test.
        stats = await _drive(miner, clients, max_requests=240, max_seconds=180)
        s = stats.summary()
        print(f"\n[load] below saturation, 24 validators x 1 connection, colour cascade: {s}")
        assert stats.total == 240 and not stats.bad
        assert stats.codes[200] == stats.total, s  # no errors at all below saturation
        assert miner.backend.guards.shedder.inflight == 0
    finally:
        await miner.stop()


async def test_load_above_saturation_sheds_low_stake_first(tmp_path: Path) -> None:
    # A model that takes 40 ms per batch of at most 4 (100 images/s): 72 callers saturate it.
    model = SlowPredictor(delay_s=0.04, prob=0.8)
    settings = _settings(
        tmp_path,
        guards={"max_inflight": 24, "priority_threshold": 0.5},
        batcher={"max_batch": 4, "max_wait_ms": 1.0},
    )
    miner = await run_miner(settings, signers=[(0, MINER)], predictor=model)
    try:
        top = [s for s, _ in VALIDATORS[:4]]  # the four highest stakes
        low = [s for s, _ in VALIDATORS[-12:]]  # the twelve lowest
        clients = [("high_stake", top[i % 4]) for i in range(12)] + [("low_stake", low[i % 12]) for i in range(60)]
        stats = await _drive(miner, clients, max_requests=20_000, max_seconds=8, backoff_503_s=0.05)
        s = stats.summary()
        hi, lo = stats.by_class["high_stake"], stats.by_class["low_stake"]
        hi_ok = hi[200] / max(sum(hi.values()), 1)
        lo_ok = lo[200] / max(sum(lo.values()), 1)
        print(f"\n[load] above saturation (capacity ~100/s, 72 callers): {s}; served high {hi_ok:.2f} low {lo_ok:.2f}")
        assert not stats.bad, stats.bad[:5]
        assert set(stats.codes) <= {200, 503}, s  # graceful: answers or a clean 503, nothing else
        assert stats.codes[503] > 0  # it really was saturated
        assert hi_ok >= 0.9 and hi_ok > lo_ok + 0.2, s  # high-stake validators are still served
        # and once the load is gone everyone is served again
        after = await _drive(miner, [("low_stake", low[0])], max_requests=3, max_seconds=10)
        assert after.codes[200] == 3
    finally:
        await miner.stop()
