"""Validator neuron + three miners of different quality on loopback: scores and weights rank them by MCC;
a restart keeps the scores; a hotkey change resets its UID."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from roadminer.chain.local import LocalChainView
from roadminer.core.config import load_settings
from roadminer.miner.run import start_miner
from roadminer.protocol.keys import HotkeySigner, ss58_from_uri
from roadminer.validator.challenges import ShuffledDeck
from roadminer.validator.client import MinerClient
from roadminer.validator.neuron import FileWeightSetter, JsonFileStateStore, RedisStateStore, Validator
from testkit.validator import VALIDATOR_URI, QualityPredictor, colour_source, miner_settings

MINERS = {
    1: ("//Bob", 0.0),
    2: ("//Charlie", 0.2),
    3: ("//Dave", 0.5),
}  # uid: (key, share of flipped answers)


def _validator_settings(chain_file: Path, state: Path, **extra: object):
    over = {
        "chain.network": "local",
        "chain.local_config": str(chain_file),
        "validator.hotkey_uri": VALIDATOR_URI,
        "validator.sample_size": 3,
        "validator.challenge_interval_s": 0.0,
        "validator.seed": 7,
        "validator.state_path": str(state),
        "validator.weights_interval_s": 0.0,
        "validator.min_allowed_weights": 2,
    }
    over.update(extra)
    return load_settings(None, over)


def test_shuffled_deck_deals_everyone_before_repeating() -> None:
    deck = ShuffledDeck(np.random.default_rng(0))
    seen: list[int] = []
    for _ in range(4):
        seen += deck.deal(range(10), 5)
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert deck.deal([], 3) == [] and sorted(deck.deal([4, 5], 9)) == [4, 5]


async def test_validator_ranks_three_miners_and_restores(tmp_path: Path) -> None:
    validator_entry = {
        "uid": 0,
        "hotkey": ss58_from_uri(VALIDATOR_URI),
        "stake": 25000.0,
        "validator_permit": True,
    }
    miners_chain = LocalChainView.write(
        tmp_path / "miners_chain.yaml",
        [validator_entry]
        + [{"uid": uid, "hotkey": ss58_from_uri(key), "stake": 0.0} for uid, (key, _) in MINERS.items()],
    )
    running = []
    try:
        for _uid, (key, flip) in MINERS.items():
            running.append(
                await start_miner(
                    miner_settings(miners_chain),
                    predictor=QualityPredictor(flip),
                    signers=[(0, HotkeySigner.from_uri(key))],
                )
            )
        neurons = [validator_entry] + [
            {"uid": uid, "hotkey": ss58_from_uri(key), "stake": 0.0, "ip": "127.0.0.1", "port": m.ports[0]}
            for (uid, (key, _)), m in zip(MINERS.items(), running, strict=True)
        ]
        chain_file = LocalChainView.write(tmp_path / "validator_chain.yaml", neurons)
        state = tmp_path / "state" / "validator.json"
        settings = _validator_settings(chain_file, state)
        chain = LocalChainView(chain_file, sync_interval_s=0)
        setter = FileWeightSetter(tmp_path / "state" / "weights.json")
        async with MinerClient(HotkeySigner.from_uri(VALIDATOR_URI), timeout_s=5.0) as client:
            v = Validator(settings, chain, client, colour_source(), JsonFileStateStore(state), setter)
            await v.run(steps=40)
            scores = v.book.scores.copy()
            wv = await v.maybe_set_weights(force=True)
            stats = {uid: v.core.stats.summary(uid) for uid in MINERS}
    finally:
        for m in running:
            await m.stop()

    assert all(stats[u]["answered"] == 40 for u in MINERS)  # every miner queried every round
    mcc = {u: stats[u]["mcc"] for u in MINERS}
    assert mcc[1] == 1.0 and mcc[1] > mcc[2] > mcc[3]
    assert scores[0] == 0.0  # the validator's own UID
    assert scores[1] > scores[2] > scores[3]
    assert wv is not None and not wv.burned
    w = wv.as_dict()
    assert w[1] > w[2] > w.get(3, 0.0)
    assert setter.path.is_file()

    # Restart: a new validator on the same state file continues from the same scores.
    chain2 = LocalChainView(chain_file, sync_interval_s=0)
    async with MinerClient(HotkeySigner.from_uri(VALIDATOR_URI)) as client:
        v2 = Validator(settings, chain2, client, colour_source(), JsonFileStateStore(state), setter)
        assert np.allclose(v2.book.scores, scores)
        assert len(v2.book.tracker.records[1].history) == 40
        # A new hotkey behind UID 3 resets that UID only.
        neurons[3] = {**neurons[3], "hotkey": ss58_from_uri("//Eve")}
        LocalChainView.write(chain_file, neurons)
        chain3 = LocalChainView(chain_file, sync_interval_s=0)
        v2.chain = chain3
        v2.sync_metagraph()
        assert v2.book.scores[3] == 0.0 and len(v2.book.tracker.records[3].history) == 0
        assert v2.book.scores[1] == scores[1]


async def test_state_in_redis_survives_restart(redis_url: str, tmp_path: Path) -> None:
    chain_file = LocalChainView.write(
        tmp_path / "c.yaml",
        [
            {"uid": 0, "hotkey": ss58_from_uri(VALIDATOR_URI), "stake": 25000.0, "validator_permit": True},
            {"uid": 1, "hotkey": ss58_from_uri("//Bob"), "stake": 0.0},
        ],
    )
    settings = _validator_settings(
        chain_file, tmp_path / "unused.json", **{"validator.state_backend": "redis"}
    )
    store = RedisStateStore(redis_url, "roadminer:test:validator")
    async with MinerClient(HotkeySigner.from_uri(VALIDATOR_URI)) as client:
        v = Validator(settings, LocalChainView(chain_file, sync_interval_s=0), client, colour_source(), store)
        v.sync_metagraph()
        v.book.score_answers([1], [0.9], 1)
        v.save_state()
        v2 = Validator(
            settings,
            LocalChainView(chain_file, sync_interval_s=0),
            client,
            colour_source(),
            RedisStateStore(redis_url, "roadminer:test:validator"),
        )
    assert v2.book.scores[1] == v.book.scores[1] > 0
    assert v2.book.hotkeys[1] == ss58_from_uri("//Bob")


async def test_no_miners_is_not_an_error(tmp_path: Path) -> None:
    chain_file = LocalChainView.write(
        tmp_path / "c.yaml",
        [{"uid": 0, "hotkey": ss58_from_uri(VALIDATOR_URI), "stake": 25000.0, "validator_permit": True}],
    )
    settings = _validator_settings(chain_file, tmp_path / "s.json")
    async with MinerClient(HotkeySigner.from_uri(VALIDATOR_URI)) as client:
        v = Validator(
            settings,
            LocalChainView(chain_file, sync_interval_s=0),
            client,
            colour_source(),
            JsonFileStateStore(tmp_path / "s.json"),
        )
        assert await v.step() == []
        wv = await v.maybe_set_weights(force=True)
    assert wv is not None and wv.burned and wv.uint16_uids == [0]
