"""Calibration: checked against logits with a known temperature and hand-computed balanced MCC."""

from __future__ import annotations

import numpy as np
import pytest

from roadminer.core.scoring import mcc
from roadminer.training.calibrate import fit_calibration, fit_temperature


def test_temperature_recovers_known_scale_and_prior_shift() -> None:
    rng = np.random.default_rng(1)
    n = 6000
    true_z = rng.normal(0, 2.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-true_z))).astype(int)
    overconfident = 3.0 * true_z  # a model whose logits are 3x too large
    t, b = fit_temperature(overconfident, y)
    assert t == pytest.approx(3.0, rel=0.1)
    assert abs(b) < 0.15
    cal = fit_calibration(overconfident, y)
    assert cal["calibrated"]["ece"] < cal["raw"]["ece"]
    assert cal["calibrated"]["brier"] <= cal["raw"]["brier"] + 1e-9
    assert 0.2 <= cal["threshold"] <= 0.8


def test_calibration_with_one_label_is_identity() -> None:
    cal = fit_calibration(np.array([1.0, 2.0]), np.array([1, 1]))
    assert cal["temperature"] == 1.0 and cal["threshold"] == 0.5


def test_balanced_mcc_weights_both_labels_equally() -> None:
    from roadminer.training.calibrate import balanced_mcc

    # 1 positive, 9 negatives; one negative wrong. Balanced: TPR 1, TNR 8/9 on a 50/50 reweighting.
    y = np.array([1] + [0] * 9)
    pred = np.array([1, 1] + [0] * 8)
    tp, fn, fp, tn = 0.5, 0.0, 0.5 / 9, 0.5 * 8 / 9
    want = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert balanced_mcc(y, pred) == pytest.approx(want)
    assert balanced_mcc(y, pred) != pytest.approx(mcc(y, pred))
    assert balanced_mcc(y, np.zeros(10, dtype=int)) == 0.0
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, 500) + 1.5 * (yy := (rng.random(500) < 0.2).astype(int))
    cal = fit_calibration(z, yy)
    shift = -np.log(cal["threshold"] / (1 - cal["threshold"]))
    p_final = 1 / (1 + np.exp(-(z / cal["temperature"] + cal["bias"] + shift)))
    assert cal["balanced_mcc_final"] == pytest.approx(balanced_mcc(yy, (p_final > 0.5).astype(int)), abs=1e-3)
