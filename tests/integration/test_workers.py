"""``server.workers``: miner processes sharing one port through SO_REUSEPORT and their nonces through a
real Redis; the supervisor restarts a worker that dies and stops them all."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from roadminer.core.config import Settings
from roadminer.miner.workers import WorkerPool, WorkersConfigError
from roadminer.protocol import sn72
from testkit.miner import ALICE, jpeg_b64, write_chain


def _settings(tmp_path: Path, redis_url: str | None, workers: int = 2) -> Settings:
    return Settings(
        wallet={"path": str(tmp_path / "wallets"), "name": "miner", "hotkey": "hot"},
        server={"host": "127.0.0.1", "port": 0, "workers": workers},
        chain={"network": "local", "local_config": str(write_chain(tmp_path / "chain.yaml"))},
        state={"backend": "redis" if redis_url else "memory", "redis_url": redis_url or "redis://127.0.0.1:1/0"},
        cascade={"tiers": [{"name": "colour", "kind": "colour"}], "consensus_file": None},
        dashboard={"on_miner": False},
        device="cpu",
    )


async def _health_pid(url: str) -> int:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s, \
            s.get(url + "/health") as r:
        data = await r.json()
        assert data["worker"]["count"] == 2
        return int(data["worker"]["pid"])


def test_workers_need_a_shared_redis_state(tmp_path: Path) -> None:
    with pytest.raises(WorkersConfigError, match=r"state\.backend: redis"):
        WorkerPool(_settings(tmp_path, None))


@pytest.mark.slow
async def test_workers_share_the_port_and_the_nonces(tmp_path: Path, redis_url: str) -> None:
    pool = WorkerPool(_settings(tmp_path, redis_url), ready_timeout_s=240)
    await pool.start()
    try:
        assert len(set(pool.pids())) == 2 and len(pool.ports) == 1
        url = pool.urls[0]
        # new connections are spread over both processes by the kernel
        seen = {await _health_pid(url) for _ in range(40)}
        assert seen == set(pool.pids())

        # one signed request replayed on fresh connections: whichever worker gets it, one answer only
        axon = pool.hotkeys[0]
        target, headers, body = sn72.build_request(ALICE, axon, "127.0.0.1", pool.ports[0], jpeg_b64())
        statuses = []
        for _ in range(10):
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s, \
                    s.post(target, headers=headers, json=body) as r:
                statuses.append(r.status)
        assert statuses.count(200) == 1 and statuses.count(401) == 9, statuses

        # a worker that dies is replaced; the port keeps answering meanwhile
        victim = pool.pids()[0]
        os.kill(victim, signal.SIGKILL)
        for _ in range(5):
            await _health_pid(url)  # served by the surviving worker
        for _ in range(240):
            if pool.restarts == 1 and len(pool.pids()) == 2:
                break
            await asyncio.sleep(0.5)
        assert pool.restarts == 1 and victim not in pool.pids() and len(pool.pids()) == 2
    finally:
        pids = pool.pids()
        await pool.stop()
    for pid in pids:  # every worker is gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
