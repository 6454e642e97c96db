"""Stacking weights, fitted exit thresholds, and the router replaying exactly what the fit simulated."""

from __future__ import annotations

import json

import numpy as np
import pytest

from roadminer.cascade.consensus import ConsensusParams, fit_stacking, logit
from roadminer.cascade.fit import fit_cascade, fit_thresholds, simulate
from roadminer.cascade.router import EarlyExitRouter
from roadminer.core.scoring import prob_mcc as mcc
from roadminer.models.base import ImageBatch, Tier, TierOutput


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three tiers of rising quality: a weak cheap one, a medium one, a strong expensive one."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = 2 * y - 1
    cols = [s * q + rng.normal(0, 1, n) for q in (0.8, 1.5, 3.0)]
    probs = 1 / (1 + np.exp(-np.stack(cols, axis=1)))
    return probs, y


class TableTier(Tier):
    """Answers from a fixed table, indexed by the image id written into pixel (0, 0)."""

    def __init__(self, name: str, table: np.ndarray) -> None:
        self.name = name
        self.table = table
        self.seen: list[int] = []

    def predict(self, batch: ImageBatch) -> TierOutput:
        ids = [_image_id(x) for x in batch.rgb]
        self.seen.extend(ids)
        return TierOutput(prob=self.table[ids])


def _image(i: int, luma: int = 128) -> np.ndarray:
    a = np.full((8, 8, 3), luma, np.uint8)
    a[0, 0] = (i // 65536, (i // 256) % 256, i % 256)
    return a


def _image_id(a: np.ndarray) -> int:
    r, g, b = (int(v) for v in a[0, 0])
    return r * 65536 + g * 256 + b


def test_stacking_weights_follow_tier_quality_and_round_trip_json(tmp_path) -> None:
    probs, y = _synthetic(3000, 0)
    params = fit_stacking(probs, y, ["a", "b", "c"])
    w = params.stages[-1].weights
    assert w[2] > w[1] > w[0] > -0.1, w
    # Stacking is calibrated: the pooled P should track the frequency of positives.
    p = params.stage_prob(2, probs)
    assert abs(p.mean() - y.mean()) < 0.02
    path = tmp_path / "consensus.json"
    params.save(path)
    again = ConsensusParams.load(path)
    assert again.fitted and again.tiers == ["a", "b", "c"]
    np.testing.assert_allclose(again.stage_prob(2, probs), p)
    with pytest.raises(ValueError):
        ConsensusParams.from_json({"tiers": ["a"], "stages": [{"weights": [1.0, 2.0]}]})


def test_fitted_thresholds_lose_no_mcc_and_exit_early() -> None:
    probs, y = _synthetic(2000, 1)
    params, rep = fit_cascade(probs, y, ["a", "b", "c"], tier_cost=[1.0, 5.0, 50.0])
    assert rep.mcc_cascade >= rep.mcc_all_tiers - 1e-12
    assert rep.mcc_cascade >= max(rep.mcc_single.values())
    assert sum(rep.exit_rate.values()) == pytest.approx(1.0)
    assert rep.exit_rate["a"] + rep.exit_rate["b"] > 0.2, rep.exit_rate
    assert rep.relative_cost is not None and rep.relative_cost < 1.0
    assert params.report["exit_rate"] == rep.exit_rate
    json.dumps(params.to_json())  # the model card stores it as JSON


def test_thresholds_on_held_out_split_stay_close() -> None:
    probs, y = _synthetic(2000, 2)
    params, _ = fit_cascade(probs, y, ["a", "b", "c"])
    test_p, test_y = _synthetic(2000, 3)
    sim = simulate(params, test_p)
    full = params.stage_prob(2, test_p)
    assert mcc(test_y, sim.prob) > mcc(test_y, full) - 0.05


def test_router_replays_the_fitted_cascade_exactly() -> None:
    probs, y = _synthetic(600, 4)
    names = ["a", "b", "c"]
    params, _ = fit_cascade(probs, y, names)
    tiers = [TableTier(n, probs[:, k]) for k, n in enumerate(names)]
    router = EarlyExitRouter(tiers, [1.0] * 3, [None] * 3, consensus=params)
    res = router.predict(ImageBatch(rgb=[_image(i) for i in range(len(y))]))
    sim = simulate(params, probs)
    np.testing.assert_array_equal(res.exit_index, sim.exit_index)
    np.testing.assert_allclose(res.prob, np.clip(sim.prob, 1e-4, 1 - 1e-4), atol=1e-9)
    # Later tiers saw only the images that had not exited.
    assert len(tiers[2].seen) == int(np.sum(sim.exit_index == 2))
    assert res.tier_images["a"] == 600 and res.tier_images["c"] == len(tiers[2].seen)
    assert set(res.tier_seconds) == set(names)


def test_difficulty_signals_keep_images_in_the_cascade() -> None:
    probs = np.array([[0.99, 0.2], [0.99, 0.9], [0.99, 0.9]])
    names = ["a", "b"]
    params = ConsensusParams.unfitted(names, [1.0, 1.0], [0.9, None])
    tiers = [TableTier(n, probs[:, k]) for k, n in enumerate(names)]
    router = EarlyExitRouter(tiers, [1.0, 1.0], [0.9, None], consensus=params, low_light_below=40)
    res = router.predict(ImageBatch(rgb=[_image(0), _image(1), _image(2, luma=10)]))
    assert res.exit_tier == ["a", "a", "b"], "the dark image goes on to the second tier"
    # Disagreement with three tiers: the second tier says "no" -> no exit after it.
    probs3 = np.array([[0.99, 0.05, 0.3], [0.99, 0.97, 0.3]])
    names3 = ["a", "b", "c"]
    tiers3 = [TableTier(n, probs3[:, k]) for k, n in enumerate(names3)]
    r3 = EarlyExitRouter(tiers3, [1.0] * 3, [None, 0.6, None], no_exit_on_disagreement=True)
    assert r3.predict(ImageBatch(rgb=[_image(0), _image(1)])).exit_tier == ["c", "b"]


def test_threshold_fit_rejects_missing_answers() -> None:
    probs, y = _synthetic(100, 5)
    probs[3, 1] = np.nan
    params = ConsensusParams.unfitted(["a", "b", "c"], [1, 1, 1])
    with pytest.raises(ValueError):
        fit_thresholds(params, probs, y)


def test_stage_pooling_is_weighted_log_odds_mean() -> None:
    params = ConsensusParams.unfitted(["a", "b"], [1.0, 3.0])
    p = np.array([[0.8, 0.6]])
    expected = 1 / (1 + np.exp(-(0.25 * logit(0.8) + 0.75 * logit(0.6))))
    assert params.stage_prob(1, p)[0] == pytest.approx(expected)
    # A tier that abstained (NaN) drops out; the other keeps the whole weight.
    assert params.stage_prob(1, np.array([[0.8, np.nan]]))[0] == pytest.approx(0.8)
