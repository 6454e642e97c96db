"""The miner announces its axon at start on a bittensor chain (the SDK's client over an in-memory subnet)
and ``/health`` reports it; a local chain reports why nothing is announced; an address that cannot be
announced refuses the start before any model loads."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from roadminer.chain.announce import AnnounceConfigError
from roadminer.chain.bittensor11 import Bittensor11ChainView
from roadminer.core.config import Settings
from roadminer.miner.run import start_miner
from testkit.bt11_chain import InMemorySubnet
from testkit.miner import MINER, MINER2, SlowPredictor, settings_for


async def _health(url: str) -> dict:
    async with aiohttp.ClientSession() as s, s.get(url + "/health") as r:
        assert r.status == 200
        return await r.json()


async def test_health_reports_the_announced_axon_of_each_hotkey(tmp_path: Path) -> None:
    subnet = InMemorySubnet(72, [MINER.ss58_address, MINER2.ss58_address])
    view = Bittensor11ChainView("test", 72, sync_interval_s=0, attempts=1, client_factory=lambda: subnet.client())
    await view.start()
    settings = Settings(server={"host": "127.0.0.1", "port": 0, "external_ip": "203.0.113.7"},
                        chain={"network": "test", "announce_check_s": 0}, guards={"allow_unregistered": True},
                        dashboard={"on_miner": False})
    miner = await start_miner(settings, predictor=SlowPredictor(0.0), chain=view, signers=[(0, MINER), (0, MINER2)])
    try:
        calls = subnet.serve_axon_calls()
        assert [c.signer for c in calls] == [MINER.ss58_address, MINER2.ss58_address]
        assert [c.call.params["port"] for c in calls] == miner.ports  # the bound ports (none configured)
        for url, hotkey, port in zip(miner.urls, miner.hotkeys, miner.ports, strict=True):
            h = await _health(url)
            assert h["hotkey"] == hotkey and h["announced"] is True
            assert h["axon"]["address"] == f"203.0.113.7:{port}" and h["axon"]["confirmed"] is True
            assert h["axon"]["on_chain"] == f"203.0.113.7:{port}"
    finally:
        await miner.stop()
        await view.stop()


async def test_local_chain_health_says_why_nothing_is_announced(tmp_path: Path) -> None:
    miner = await start_miner(settings_for(tmp_path), predictor=SlowPredictor(0.0), signers=[(0, MINER)])
    try:
        h = await _health(miner.url)
        assert h["announced"] is False and "local chain" in h["axon"]["reason"]
        assert h["worker"] == {"index": 0, "count": 1, "pid": h["worker"]["pid"]}
    finally:
        await miner.stop()


async def test_wildcard_bind_without_external_ip_refuses_to_start() -> None:
    settings = Settings(server={"host": "0.0.0.0", "port": 0}, chain={"network": "finney"})
    with pytest.raises(AnnounceConfigError, match="external_ip"):
        await start_miner(settings, predictor=SlowPredictor(0.0), signers=[(0, MINER)])
