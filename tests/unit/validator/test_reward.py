"""Reward, EMA and weights against hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from roadminer.core.scoring import FAILED, reward_from_history, window_metrics
from roadminer.validator.reward import PerformanceTracker, ScoreBook
from roadminer.validator.weights import U16_MAX, normalize_max_weight, process_weights, to_uint16


def test_reward_perfect_and_chance() -> None:
    assert reward_from_history([(0.9, 1), (0.1, 0), (0.8, 1), (0.3, 0)]) == pytest.approx(1.0)
    # rounded [1,0,1,0] vs labels [1,0,0,1]: mcc 0, acc 0.5 -> 0.25^3
    assert reward_from_history([(0.9, 1), (0.2, 0), (0.7, 0), (0.4, 1)]) == pytest.approx(0.015625)
    # constant predictions: mcc 0, acc 0.5
    assert reward_from_history([(0.9, 1), (0.9, 0), (0.9, 1), (0.9, 0)]) == pytest.approx(0.015625)
    # all wrong: mcc = max(0, -1) = 0, acc 0
    assert reward_from_history([(0.1, 1), (0.9, 0)]) == 0.0
    # 0.5 means "no": for label 1 it is wrong
    assert reward_from_history([(0.5, 1), (0.1, 0)]) == pytest.approx((0.5 * 0 + 0.5 * 0.5) ** 3)


def test_accuracy_window_is_last_10_and_mcc_last_100() -> None:
    labels = [1, 0] * 6
    preds = [0.2, 0.8] + [0.9, 0.1] * 5  # first two wrong, last ten right
    hist = list(zip(preds, labels, strict=True))
    assert window_metrics(hist, 10).accuracy == 1.0
    assert window_metrics(hist, 100).mcc == pytest.approx(2 / 3)
    assert reward_from_history(hist) == pytest.approx((0.5 * 2 / 3 + 0.5 * 1.0) ** 3)


def test_failures_take_slots_then_drop() -> None:
    t = PerformanceTracker()
    assert t.record(3, "hk", 0.9, 1) == pytest.approx((0.5 * 0 + 0.5 * 1) ** 3)  # labels constant so far
    assert t.record(3, "hk", None, 0) == 0.0  # no answer
    assert t.record(3, "hk", 1.7, 0) == 0.0  # out of range
    assert t.record(3, "hk", float("nan"), 0) == 0.0
    assert t.record(3, "hk", 0.1, 0) == pytest.approx(1.0)  # failures dropped: 2 valid, both right
    m = t.metrics(3, 10)
    assert (m.n, m.failures) == (2, 3)
    # ten failures push the good answers out of the accuracy window
    for _ in range(10):
        t.record(3, "hk", -1, 1)
    assert window_metrics(t.records[3].history, 10).n == 0
    assert list(t.records[3].history)[-1] == (FAILED, 1)


def test_history_is_a_100_deque() -> None:
    t = PerformanceTracker()
    for i in range(150):
        t.record(0, "hk", 0.9 if i % 2 else 0.1, i % 2)
    assert len(t.records[0].history) == 100


def test_hotkey_change_resets_history() -> None:
    t = PerformanceTracker()
    t.record(1, "old", 0.9, 1)
    t.record(1, "new", 0.1, 0)
    assert len(t.records[1].history) == 1 and t.records[1].hotkey == "new"


def test_ema_hand_computed() -> None:
    book = ScoreBook()
    book.sync_hotkeys(["v", "a", "b"])
    book.update_ema([1], [1.0])
    assert book.scores[1] == pytest.approx(0.05)
    book.update_ema([1, 2], [1.0, 0.5])
    assert book.scores[1] == pytest.approx(0.05 * 1.0 + 0.95 * 0.05)
    assert book.scores[2] == pytest.approx(0.025)
    book.scores[0] = 0.3
    book.update_ema([2], [0.0], validator_uids=[0])
    assert book.scores[0] == 0.0  # validators' own UIDs are zeroed
    assert book.scores[1] == pytest.approx(0.0975)  # not queried: unchanged
    assert book.scores[2] == pytest.approx(0.95 * 0.025)


def test_score_answers_and_hotkey_reset_and_json_roundtrip() -> None:
    book = ScoreBook()
    book.sync_hotkeys(["v", "a", "b"])
    r = book.score_answers([1, 2], [0.9, None], 1)
    assert r[0] == pytest.approx(0.125) and r[1] == 0.0
    assert book.scores[1] == pytest.approx(0.05 * 0.125)
    restored = ScoreBook.from_json(json.loads(json.dumps(book.to_json())))
    assert np.allclose(restored.scores, book.scores) and restored.hotkeys == book.hotkeys
    assert list(restored.tracker.records[1].history) == [(0.9, 1)]
    # the hotkey at UID 1 changes: score and history reset; the metagraph grows by one
    reset = restored.sync_hotkeys(["v", "a2", "b", "c"])
    assert reset == [1]
    assert restored.scores[1] == 0.0 and len(restored.tracker.records[1].history) == 0
    assert restored.scores.shape == (4,) and restored.hotkeys[3] == "c"


def test_weights_l1_and_uint16() -> None:
    wv = process_weights(np.array([0.0, 2.0, 1.0, 1.0]), min_allowed_weights=2, version_key=7)
    assert not wv.burned and wv.version_key == 7
    assert wv.uids == [1, 2, 3] and wv.weights == pytest.approx([0.5, 0.25, 0.25])
    assert wv.uint16_uids == [1, 2, 3] and wv.uint16 == [U16_MAX, 32768, 32768]


def test_weights_burn_when_too_few_nonzero() -> None:
    wv = process_weights(np.array([0.0, 0.0, 3.0, 0.0]), min_allowed_weights=2)
    assert wv.burned and wv.uint16_uids == [0] and wv.uint16 == [U16_MAX]
    wv = process_weights(np.zeros(5), min_allowed_weights=1)
    assert wv.burned and wv.uids == [0]
    wv = process_weights(np.array([np.nan, 1.0, -2.0]), min_allowed_weights=1)
    assert not wv.burned and wv.uids == [1]


def test_max_weight_limit_caps() -> None:
    capped = normalize_max_weight(np.array([0.8, 0.1, 0.1]), limit=0.5)
    assert capped == pytest.approx([0.5, 0.25, 0.25], abs=1e-5)
    assert normalize_max_weight(np.array([0.2, 0.3, 0.5]), limit=0.6) == pytest.approx([0.2, 0.3, 0.5])
    wv = process_weights(np.array([0.0, 8.0, 1.0, 1.0]), max_weight_limit=0.5)
    assert max(wv.weights) <= 0.5 + 1e-6


def test_to_uint16_drops_zeros() -> None:
    assert to_uint16([4, 5, 6], [1.0, 0.0, 0.5]) == ([4, 6], [U16_MAX, 32768])
    assert to_uint16([], []) == ([], [])
    with pytest.raises(ValueError):
        to_uint16([1], [0.5, 0.5])
