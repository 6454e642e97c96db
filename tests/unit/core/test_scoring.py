"""The scoring module against hand-computed cases: the validator's rounding, MCC, AUC with ties, Brier,
ECE, the grouped metric dict and the reward windows."""

from __future__ import annotations

import numpy as np
import pytest

from roadminer.core.scoring import (
    FAILED,
    auc,
    binary_metrics,
    brier,
    ece,
    is_valid_prediction,
    mcc,
    prob_mcc,
    to_label,
    window_metrics,
)


def test_half_counts_as_no_roadwork() -> None:
    assert to_label([0.5, 0.5000001, 0.0, 1.0, 0.4999]).tolist() == [0, 1, 0, 1, 0]
    assert int(to_label(0.5)) == 0


def test_mcc_hand_cases() -> None:
    assert mcc([1, 0, 1, 0], [1, 0, 1, 0]) == 1.0
    assert mcc([1, 0, 1, 0], [0, 1, 0, 1]) == -1.0
    assert mcc([1, 1, 1], [1, 0, 1]) == 0.0  # constant labels
    assert mcc([1, 0, 1], [1, 1, 1]) == 0.0  # constant predictions
    assert mcc([], []) == 0.0
    # tp=5 fn=1 tn=5 fp=1 -> (25-1)/sqrt(6^4) = 2/3
    assert mcc([1, 0] * 6, [0, 1] + [1, 0] * 5) == pytest.approx(2 / 3)
    # probabilities under the validator rounding: 0.5 is "no"
    assert prob_mcc([0, 1], [0.5, 0.9]) == 1.0


def test_auc_counts_ties_half() -> None:
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4, 0.8>0.1, 0.4=0.4 -> 1/2, 0.4>0.1) = 3.5/4
    assert auc([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]) == pytest.approx(0.875)
    assert auc([1, 1], [0.2, 0.3]) is None


def test_brier_and_ece() -> None:
    assert brier([1, 0], [0.75, 0.25]) == pytest.approx(0.0625)
    assert brier([], []) is None
    y = np.array([0, 1] * 50)
    assert ece(y, np.full(100, 0.5)) == pytest.approx(0.0)
    assert ece(y, y.astype(float)) == pytest.approx(0.0)
    assert ece(y, 1 - y.astype(float)) == pytest.approx(1.0)
    # one bin [0.7, 0.8): mean p 0.75, positive rate 0.5 -> 0.25
    assert ece([1, 0], [0.75, 0.75]) == pytest.approx(0.25)


def test_binary_metrics_dict() -> None:
    m = binary_metrics([1, 0], [0.5, 0.5])  # exactly 0.5 counts as "no roadwork"
    assert m["recall"] == 0.0 and m["fpr"] == 0.0 and m["accuracy"] == 0.5
    m = binary_metrics([0, 0, 0], [0.1, 0.7, 0.2])
    assert m["auc"] is None and m["mcc"] is None and m["fpr"] == pytest.approx(1 / 3, abs=1e-4)
    m = binary_metrics([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1])
    assert m == {
        "n": 4, "positives": 2, "negatives": 2, "mcc": pytest.approx(0.5774, abs=1e-4), "accuracy": 0.75,
        "auc": 0.875, "brier": pytest.approx(0.1425), "ece": 0.125, "recall": 0.5, "fpr": 0.0,
    }


def test_failed_answers_take_a_slot_then_drop() -> None:
    assert not is_valid_prediction(None) and not is_valid_prediction(float("nan")) and not is_valid_prediction(1.5)
    m = window_metrics([(FAILED, 1), (0.9, 1), (0.1, 0)], 100)
    assert (m.n, m.failures, m.accuracy, m.mcc) == (2, 1, 1.0, 1.0)
