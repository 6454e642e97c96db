"""``roadminer simulate --state-url``: labelled outcomes land in the miner's own Redis state, so its
history, dashboard and hard-example labels show what the validators would score."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp
import pytest

from roadminer.chain.local import LocalChainView
from roadminer.core.config import StateConfig
from roadminer.miner.run import start_miner
from roadminer.protocol.keys import HotkeySigner, ss58_from_uri
from roadminer.state.layer import StateLayer
from roadminer.validator.simulator import OutcomeRecorder, simulate
from testkit.net import free_port
from testkit.validator import QualityPredictor, colour_source, miner_settings

MINER_URI = "//Dave"
VALIDATORS = ("//Alice", "//Bob")


async def test_simulator_records_outcomes_into_miner_redis(redis_url: str, tmp_path: Path) -> None:
    chain_file = LocalChainView.write(
        tmp_path / "chain.yaml",
        [
            {"uid": 0, "uri": VALIDATORS[0], "stake": 25000.0, "validator_permit": True},
            {"uid": 1, "uri": VALIDATORS[1], "stake": 5000.0, "validator_permit": True},
            {"uid": 2, "uri": MINER_URI, "stake": 0.0, "validator_permit": False},
        ],
    )
    prefix = "simstate:"
    settings = miner_settings(
        chain_file, **{"state.backend": "redis", "state.redis_url": redis_url, "state.key_prefix": prefix}
    )
    state_cfg = StateConfig(backend="redis", redis_url=redis_url, key_prefix=prefix)
    miner = await start_miner(
        settings, predictor=QualityPredictor(0.3), signers=[(0, HotkeySigner.from_uri(MINER_URI))]
    )
    summaries = {}
    try:
        for i, uri in enumerate(VALIDATORS):
            summaries[uri] = await simulate(
                miner.url, n=20, seed=i, source=colour_source(), hotkey_uri=uri, progress=False,
                state_url=redis_url, state_config=state_cfg,
            )
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{miner.url}/dashboard/api/snapshot?window=1h") as r:
                assert r.status == 200
                snap = await r.json()
            async with s.get(f"{miner.url}/metrics") as r:
                metrics = await r.text()
    finally:
        await miner.stop()

    hotkeys = {ss58_from_uri(u) for u in VALIDATORS}
    vals = snap["reward"]["validators"]
    assert set(vals) == hotkeys
    for uri in VALIDATORS:
        s = summaries[uri]
        assert s["answered"] == 20 and s["state"]["recorded"] == 20 and s["state"]["errors"] == 0
        series = vals[ss58_from_uri(uri)]
        assert len(series["mcc"]) == len(series["accuracy"]) == len(series["reward"]) == 20
        # The rolling MCC over the whole run (< 100 answers) is the simulator's own MCC.
        assert series["mcc"][-1][1] == pytest.approx(s["mcc"], abs=1e-3)
        assert series["reward"][-1][1] == pytest.approx(s["reward"], abs=1e-3)
        assert s["state"]["queued_known_errors"] > 0  # 30% of answers are flipped
    # The gauges follow the history even though another process recorded it.
    for hk in hotkeys:
        assert f'roadminer_mcc{{validator="{hk}"}}' in metrics

    layer = StateLayer.from_config(state_cfg)
    try:
        stats = await layer.queue.stats()
        assert stats["by_reason"].get("known_error", 0) == sum(
            s["state"]["queued_known_errors"] for s in summaries.values()
        )
        for ex in await layer.queue.entries():
            assert await layer.queue.label_of(ex) in (0, 1)  # every queued example got its label
    finally:
        await layer.close()


async def test_recorder_rejects_non_redis_url() -> None:
    with pytest.raises(ValueError, match="redis://"):
        OutcomeRecorder.from_url("http://127.0.0.1:6379", "5Fhk")


async def test_recorder_survives_a_dead_redis() -> None:
    from roadminer.validator.challenges import Challenge
    from roadminer.validator.client import QueryResult

    rec = OutcomeRecorder.from_url(f"redis://127.0.0.1:{free_port()}/0", "5Fhk")
    jpeg = b"\xff\xd8not-really"
    ch = Challenge(label=1, level=0, jpeg=jpeg, source=hashlib.sha256(jpeg).hexdigest())
    try:
        await rec.record(ch, QueryResult(0, "hk", 0.2, 200, "ok", 0.01))
    finally:
        await rec.close()
    assert rec.recorded + rec.errors == 1  # nothing raised (the store may fall back to memory)
