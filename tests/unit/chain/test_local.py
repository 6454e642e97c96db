"""File-backed chain view: parsing, lookups, stake quantiles, reload on change, bad files."""

from __future__ import annotations

import os
import time

from roadminer.chain.base import build_chain
from roadminer.chain.local import LocalChainView
from roadminer.core.config import Settings
from roadminer.protocol.keys import ss58_from_uri


def _write(path, neurons, **kw):
    return LocalChainView.write(path, neurons, **kw)


async def test_lookups_and_quantiles(tmp_path) -> None:
    f = _write(
        tmp_path / "c.yaml",
        [
            {"uid": 0, "uri": "//Alice", "stake": 100.0, "validator_permit": True},
            {"uid": 1, "uri": "//Bob", "stake": 300.0, "validator_permit": True, "incentive": 0.1},
            {"uid": 2, "hotkey": ss58_from_uri("//Dave"), "stake": 0.0},
        ],
        weights={0: {2: 0.7}, 1: {2: 0.3}},
        block=42,
    )
    chain = build_chain(Settings(chain={"network": "local", "local_config": str(f)}))
    await chain.start()
    try:
        alice, bob = chain.get(ss58_from_uri("//Alice")), chain.get(ss58_from_uri("//Bob"))
        assert alice.uid == 0 and alice.validator_permit and bob.incentive == 0.1
        assert chain.get(ss58_from_uri("//Eve")) is None
        assert chain.by_uid(2).validator_permit is False and chain.block == 42
        assert len(chain.neurons()) == 3 and len(chain.validators()) == 2
        assert chain.stake_quantile(alice.hotkey) == 0.5 and chain.stake_quantile(bob.hotkey) == 1.0
        assert chain.stake_quantile(ss58_from_uri("//Eve")) == 0.0
        assert chain.weights_for(2) == {0: 0.7, 1: 0.3}
        assert chain.describe()["validators"] == 2
    finally:
        await chain.stop()


def test_reload_on_change_and_bad_files(tmp_path) -> None:
    f = _write(tmp_path / "c.yaml", [{"uid": 0, "uri": "//Alice", "stake": 1.0, "validator_permit": True}])
    chain = LocalChainView(f, check_interval_s=0.0)
    alice = ss58_from_uri("//Alice")
    assert chain.get(alice).stake == 1.0
    _write(f, [{"uid": 0, "uri": "//Alice", "stake": 5.0, "validator_permit": True}])
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert chain.get(alice).stake == 5.0
    f.write_text("neurons: [{uid: 0, hotkey: not-an-address}]")
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert chain.get(alice).stake == 5.0  # previous view kept
    assert "not" in (chain.last_error or "") or "ss58" in (chain.last_error or "")
    missing = LocalChainView(tmp_path / "nope.yaml")
    assert missing.get(alice) is None and missing.neurons() == []
