"""bittensor 11 chain view, offline parts: metagraph conversion, retries/backoff, outage keeps the view."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from roadminer.chain.bittensor11 import Bittensor11ChainView, snapshot_from_metagraph, with_retries


def _neuron(uid: int, hotkey: str, axon: str | None, stake: float, permit: bool) -> SimpleNamespace:
    return SimpleNamespace(
        uid=uid,
        hotkey=hotkey,
        coldkey="ck",
        axon=axon,
        total_stake=SimpleNamespace(tao=stake),
        validator_permit=permit,
        active=True,
        incentive=0.25,
        trust=0.5,
        consensus=0.1,
        emission=SimpleNamespace(tao=1.5),
        dividends=0.0,
    )


def test_snapshot_from_metagraph() -> None:
    mg = SimpleNamespace(
        block=1234,
        neurons=[_neuron(0, "v", None, 5000.0, True), _neuron(1, "m", "10.0.0.2:8091", 0.0, False)],
        raw={"weights": [[0, [[1, 30000], [0, 10000]]]]},
    )
    snap = snapshot_from_metagraph(mg, 72)
    assert snap.block == 1234 and snap.by_uid[0].stake == 5000.0 and snap.by_uid[0].validator_permit
    assert (snap.by_uid[1].ip, snap.by_uid[1].port) == ("10.0.0.2", 8091)
    assert snap.by_uid[0].port == 0 and snap.by_uid[1].emission == 1.5
    assert snap.weights[0][1] == pytest.approx(0.75)


async def test_with_retries_backoff() -> None:
    calls, sleeps = [], []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "ok"

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)

    assert await with_retries(flaky, attempts=4, base_delay_s=1.0, sleep=fake_sleep) == "ok"
    assert len(calls) == 3 and len(sleeps) == 2 and sleeps[1] > sleeps[0] * 0.9
    calls.clear()

    async def dead() -> str:
        calls.append(1)
        raise ConnectionError("still down")

    with pytest.raises(ConnectionError):
        await with_retries(dead, attempts=3, sleep=fake_sleep)
    assert len(calls) == 3


async def test_outage_keeps_previous_view_and_refuses_writes() -> None:
    view = Bittensor11ChainView("ws://127.0.0.1:9", 72, sync_interval_s=0, attempts=1)
    assert await view.sync() is False  # nothing listens there: the view stays (empty) and nothing raises
    assert view.last_error and view.neurons() == []
    assert await view.set_weights([1], [65535], 10) is False  # no wallet
    await view.stop()
