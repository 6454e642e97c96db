"""Reward forensics on metagraph data built in bittensor 11's own types (Metagraph, MetagraphNeuron,
Balance) and its weights read's shape: per-epoch records, who rates us low, the one-validator-drop and
broad-drop alerts, the dashboard panels, and the miner's recorder over the local chain view."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bittensor.balance import Balance
from bittensor.metagraph import Metagraph, MetagraphNeuron

from roadminer.chain.bittensor11 import snapshot_from_metagraph
from roadminer.chain.forensics import (
    ForensicsLog,
    ForensicsRecorder,
    detect_alerts,
    record_from_metagraph,
    record_from_snapshot,
    who_rates_us_low,
)
from roadminer.chain.local import LocalChainView
from roadminer.core.config import Settings, StateConfig
from roadminer.dashboard.app import render_page
from roadminer.dashboard.data import DashboardData
from roadminer.protocol.keys import ss58_from_uri
from roadminer.state.backends.redis_store import RedisStore
from roadminer.state.layer import StateLayer

NETUID = 72
OUR_UID = 3
# uid -> (hotkey, validator permit, stake in alpha); real ss58 keys (the local chain file checks them)
NEURONS = {
    0: (ss58_from_uri("//Alpha"), True, 30_000.0),
    1: (ss58_from_uri("//Bravo"), True, 5_000.0),
    2: (ss58_from_uri("//Charlie"), True, 1_500.0),
    3: (ss58_from_uri("//OurMiner"), False, 0.0),
    4: (ss58_from_uri("//OtherMiner"), False, 0.0),
    5: (ss58_from_uri("//Silent"), True, 800.0),  # never sets weights
}
OURS = NEURONS[OUR_UID][0]


def _alpha(x: float) -> Balance:
    return Balance.from_rao(int(x * 1e9), NETUID, "ש")


def metagraph(epoch: int, incentive: float, emission: float) -> Metagraph:
    neurons = []
    for uid, (hk, permit, stake) in NEURONS.items():
        mine = uid == OUR_UID
        neurons.append(
            MetagraphNeuron(
                uid=uid, hotkey=hk, coldkey=f"5Cold{uid}", active=True, validator_permit=permit,
                last_update=epoch - 5, block_at_registration=10, rank=incentive if mine else 0.1,
                trust=0.9 if mine else 0.0, consensus=0.3 if mine else 0.1,
                incentive=incentive if mine else 0.2, dividends=0.0 if not permit else 0.3, pruning_score=0.1,
                emission=_alpha(emission if mine else 1.0), alpha_stake=_alpha(stake),
                tao_stake=Balance.from_tao(stake / 10), total_stake=_alpha(stake),
                axon=f"10.0.0.{uid}:8091", identity=None, commitment=None,
            )
        )
    return Metagraph(
        netuid=NETUID, mechid=0, name="streetvision", symbol="ש", block=epoch + 7, tempo=360, last_step=epoch,
        blocks_since_last_step=7, owner_hotkey="5Owner", owner_coldkey="5OwnerCold", network_registered_at=1,
        num_uids=len(neurons), max_uids=256, price=0.01, moving_price=0.01, identity=None, neurons=neurons,
        commitments={}, unregistered_commitments={}, raw={},
    )


def weights(ours: dict[int, float]) -> dict[int, dict[int, float]]:
    """The ``client.weights.weights(netuid)`` shape: rows summing to 1; ``ours`` = each validator's share
    for our UID, the rest to UID 4."""
    return {v: {OUR_UID: w, 4: 1.0 - w} for v, w in ours.items()}


EPOCHS = [  # (epoch block, our incentive, emission, validator uid -> its weight on us)
    (1000, 0.30, 12.0, {0: 0.30, 1: 0.28, 2: 0.31}),
    (1361, 0.31, 12.4, {0: 0.31, 1: 0.30, 2: 0.29}),
    (1722, 0.30, 12.1, {0: 0.30, 1: 0.29, 2: 0.30}),
    (2083, 0.27, 11.0, {0: 0.31, 1: 0.03, 2: 0.30}),  # Bravo turns on us; the others hold
    (2444, 0.10, 4.0, {0: 0.08, 1: 0.03, 2: 0.07}),  # everyone lowers us
]


def test_record_from_bittensor11_types() -> None:
    epoch, inc, em, ours = EPOCHS[3]
    mg = metagraph(epoch, inc, em)
    rec = record_from_metagraph(mg, weights(ours), OURS, t=5.0)
    assert rec is not None and (rec.epoch, rec.block, rec.uid) == (2083, 2090, OUR_UID)
    assert rec.incentive == pytest.approx(0.27) and rec.emission == pytest.approx(11.0) and rec.trust == 0.9
    by_uid = {v.uid: v for v in rec.validators}
    assert set(by_uid) == {0, 1, 2, 5}  # permits only, not ourselves or other miners
    assert by_uid[0].stake == pytest.approx(30_000.0) and by_uid[1].weight == pytest.approx(0.03)
    assert by_uid[5].weight is None  # no weight row: has not set weights
    # The miner's own path (chain view snapshot) gives the same record.
    snap = snapshot_from_metagraph(mg, NETUID, weights(ours))
    assert snap.epoch == 2083 and snap.weights[1][OUR_UID] == pytest.approx(0.03)
    same = record_from_snapshot(snap, OURS, t=5.0)
    assert same is not None and same.to_json() == rec.to_json()
    expected = (30_000 * 0.31 + 5_000 * 0.03 + 1_500 * 0.30) / 36_500
    assert rec.consensus_weight() == pytest.approx(expected)
    ranking = who_rates_us_low(rec)
    assert [r.uid for r in ranking] == [1, 2, 0, 5]  # lowest relative weight first, silent ones last
    assert ranking[0].relative == pytest.approx(0.03 / expected) and ranking[-1].relative is None
    assert record_from_metagraph(mg, weights(ours), "5NotRegistered") is None


def test_alert_rules() -> None:
    recs = [record_from_metagraph(metagraph(e, i, m), weights(w), OURS, t=float(k)) for k, (e, i, m, w) in
            enumerate(EPOCHS)]
    assert all(r is not None for r in recs)
    assert detect_alerts(recs[:3]) == []  # steady
    one = detect_alerts(recs[:4])  # type: ignore[arg-type]
    assert [(a.kind, a.uid) for a in one] == [("validator_drop", 1)]
    assert one[0].before == pytest.approx(0.29) and one[0].after == pytest.approx(0.03)
    assert one[0].others_ratio == pytest.approx(1.0, abs=0.05) and NEURONS[1][0] in one[0].message
    broad = detect_alerts(recs)  # type: ignore[arg-type]
    assert [a.kind for a in broad] == ["broad_drop"] and broad[0].others_ratio < 0.5
    # A small wobble is no alert; neither is a drop of a validator that never rated us.
    wobble = [*recs[:3], record_from_metagraph(metagraph(2083, 0.3, 12.0), weights({0: 0.27, 1: 0.2, 2: 0.33}),
                                               OURS, t=9.0)]
    assert detect_alerts(wobble) == []  # type: ignore[arg-type]


async def test_log_dashboard_and_recorder(redis_url: str, tmp_path: Path) -> None:
    state = StateLayer.from_config(StateConfig(backend="redis", redis_url=redis_url))
    log = ForensicsLog(state.store)
    seen = []
    for k, (e, i, m, w) in enumerate(EPOCHS[:4]):
        rec = record_from_metagraph(metagraph(e, i, m), weights(w), OURS, t=1_000_000.0 + 3600 * k)
        assert rec is not None
        seen.append(await log.observe(rec))
        assert await log.observe(rec) is None  # the same epoch again: not recorded twice
    assert seen[:3] == [[], [], []] and [a.kind for a in seen[3] or []] == ["validator_drop"]
    assert [r.epoch for r in await log.records()] == [1000, 1361, 1722, 2083]
    alerts = await log.alerts()
    assert len(alerts) == 1 and alerts[0]["uid"] == 1

    snap = await DashboardData(state).snapshot(window_s=86400.0, now=1_000_000.0 + 4 * 3600)
    fx = snap["forensics"]
    assert fx["epochs"] == 4 and fx["latest"]["epoch"] == 2083 and len(fx["alerts"]) == 1
    assert [r["uid"] for r in fx["ranking"]] == [1, 2, 0, 5]
    assert [p[1] for p in fx["series"]["incentive"]] == pytest.approx([0.30, 0.31, 0.30, 0.27])
    html = render_page(snap, "24h", 0)
    bars = re.findall(r'<g class="bar (\w+)" data-hotkey="([^"]+)" data-uid="(\d+)"', html)
    assert [(c, int(u)) for c, _, u in bars] == [("low", 1), ("ok", 2), ("ok", 0), ("none", 5)]
    assert "Who rates us low" in html and "cut its weight on UID 3" in html and 'class="alert validator_drop"' in html

    # The running miner's recorder reads the chain view; here the local chain file, epoch by epoch.
    chain_file = tmp_path / "chain.yaml"
    store = RedisStore(redis_url, prefix="fx2:")
    chain = LocalChainView(chain_file, netuid=NETUID, check_interval_s=0.0)  # re-read on every sync
    recorder = ForensicsRecorder(chain, store, OURS, interval_s=60)
    try:
        for e, inc, _, w in EPOCHS[:4]:
            neurons = [{"uid": uid, "hotkey": hk, "stake": stake, "validator_permit": permit,
                        "incentive": inc if uid == OUR_UID else 0.2} for uid, (hk, permit, stake) in NEURONS.items()]
            LocalChainView.write(chain_file, neurons, NETUID, weights=weights(w), block=e)
            await chain.sync()
            await recorder.record_once()
            assert await recorder.record_once() is None  # nothing new until the next epoch
        assert recorder.recorded == 4
        got = await ForensicsLog(store).alerts()
        assert [(a["kind"], a["uid"]) for a in got] == [("validator_drop", 1)]
    finally:
        await store.close()
        await state.close()
    assert Settings().chain.metrics_interval_s > 0  # the miner records on by default
