"""The simulator against real miners on loopback (SN72 and btauth/1), and the demo end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from roadminer.chain.local import LocalChainView
from roadminer.miner.run import start_miner
from roadminer.protocol.keys import HotkeySigner, ss58_from_uri
from roadminer.validator.simulator import parse_miner_url, simulate
from testkit.validator import VALIDATOR_URI, QualityPredictor, colour_source, miner_settings

MINER_URI = "//Dave"


async def _miner(tmp_path: Path, flip_share: float = 0.0):
    chain_file = LocalChainView.write(
        tmp_path / "chain.yaml",
        [
            {"uid": 0, "hotkey": ss58_from_uri(VALIDATOR_URI), "stake": 25000.0, "validator_permit": True},
            {"uid": 1, "hotkey": ss58_from_uri(MINER_URI), "stake": 0.0, "validator_permit": False},
        ],
    )
    settings = miner_settings(chain_file)
    return await start_miner(
        settings, predictor=QualityPredictor(flip_share), signers=[(0, HotkeySigner.from_uri(MINER_URI))]
    )


def test_parse_miner_url() -> None:
    assert parse_miner_url("http://127.0.0.1:8091") == ("127.0.0.1", 8091)
    assert parse_miner_url("localhost:9000/") == ("localhost", 9000)
    with pytest.raises(ValueError):
        parse_miner_url("http://127.0.0.1")


async def test_simulate_perfect_miner_sn72(tmp_path: Path) -> None:
    miner = await _miner(tmp_path)
    try:
        out = tmp_path / "sim.json"
        s = await simulate(miner.url, n=24, seed=3, source=colour_source(), out=out, progress=False)
    finally:
        await miner.stop()
    assert s["n"] == 24 and s["answered"] == 24 and s["errors"] == {}
    assert s["mcc"] == 1.0 and s["accuracy"] == 1.0 and s["reward"] == pytest.approx(1.0)
    # EMA after 24 rewards of 1 from zero: 1 - 0.95^24 (the very first reward has constant labels).
    assert 0.6 < s["ema"] <= 1 - 0.95**24 + 1e-9
    assert s["miner"]["uid"] == 1 and s["miner"]["hotkey"] == ss58_from_uri(MINER_URI)
    assert s["latency_ms"]["p50"] is not None and s["latency_ms"]["p99"] >= s["latency_ms"]["p50"]
    assert set(s["per_level"]) <= {"0", "1", "2", "3"} and sum(v["n"] for v in s["per_level"].values()) == 24
    assert s["labels"]["roadwork"] + s["labels"]["no_roadwork"] == 24
    assert json.loads(out.read_text())["mcc"] == 1.0


async def test_simulate_btauth_and_deterministic(tmp_path: Path) -> None:
    miner = await _miner(tmp_path, flip_share=0.3)
    try:
        a = await simulate(
            miner.url, n=12, seed=5, source=colour_source(), protocol="btauth", progress=False, concurrency=3
        )
        b = await simulate(miner.url, n=12, seed=5, source=colour_source(), protocol="sn72", progress=False)
    finally:
        await miner.stop()
    assert a["answered"] == 12 and a["protocol"] == "btauth"
    # Same seed, same challenges, same (deterministic) miner: same scores over either protocol.
    assert (a["mcc"], a["accuracy"], a["labels"]) == (b["mcc"], b["accuracy"], b["labels"])
    assert a["per_level"] == b["per_level"]


async def test_simulate_refused_validator_counts_errors(tmp_path: Path) -> None:
    miner = await _miner(tmp_path)
    try:
        # //Ferdie is not on the miner's chain: every query is refused (403), nothing raises.
        s = await simulate(
            miner.url, n=4, seed=0, source=colour_source(), hotkey_uri="//Ferdie", progress=False
        )
        dead = await simulate(
            "http://127.0.0.1:9",
            n=2,
            seed=0,
            source=colour_source(),
            progress=False,
            miner_hotkey=ss58_from_uri(MINER_URI),
            timeout_s=2.0,
        )
    finally:
        await miner.stop()
    assert s["answered"] == 0 and s["errors"] == {"http_403": 4}
    assert s["reward"] == 0.0 and s["ema"] == 0.0 and s["mcc"] == 0.0
    assert dead["answered"] == 0 and dead["errors"] == {"connection": 2}


async def test_demo_runs_with_no_data(tmp_path: Path) -> None:
    from roadminer.miner.demo import run_demo

    s = await run_demo(
        n=6, seed=1, wallet_dir=tmp_path / "wallets", progress=False, out=tmp_path / "demo.json"
    )
    assert s["n"] == 6 and s["answered"] == 6 and s["source"] == "scenes"
    assert (tmp_path / "demo.json").is_file()
    assert (tmp_path / "wallets" / "demo" / "hotkeys" / "miner").is_file()
