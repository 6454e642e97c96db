"""Every score roadminer reports, in one place, on scikit-learn: MCC, ROC AUC, Brier, ECE, and the
validator's reward over rolling windows.

The validator's rule for turning P(roadwork) into a yes/no lives in :func:`to_label` only: it rounds like
``np.round`` on [0, 1], so ``p > 0.5`` is "roadwork" and exactly 0.5 counts as "no roadwork".

    reward = (0.5 * MCC(last 100) + 0.5 * Accuracy(last 10)) ** 3,   0 for a failed answer
    MCC = max(0, matthews_corrcoef), 0 when the labels or the predictions are constant

A failed answer (none, -1, NaN or outside [0, 1]) is recorded as ``FAILED``: it takes a slot in the
window and is then dropped from the metric computation, as the reference validator does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import brier_score_loss, matthews_corrcoef, roc_auc_score

WINDOW_MCC = 100
WINDOW_ACC = 10
FAILED = -1.0
ECE_BINS = 10

ArrayLike = Sequence[float] | Sequence[int] | np.ndarray


def to_label(p: ArrayLike | float) -> np.ndarray:
    """The validator's yes/no of probabilities ``p`` in [0, 1]: 1 when ``p > 0.5``, else 0 (exactly 0.5 is
    "no", as ``np.round`` rounds half to even)."""
    return (np.asarray(p, dtype=np.float64) > 0.5).astype(np.int64)


def is_valid_prediction(p: Any) -> bool:
    """Whether the validator scores ``p`` (a number in [0, 1]); anything else is a failed answer."""
    try:
        v = float(p)
    except (TypeError, ValueError):
        return False
    return not math.isnan(v) and 0.0 <= v <= 1.0


def mcc(labels: ArrayLike, preds: ArrayLike, sample_weight: ArrayLike | None = None) -> float:
    """Matthews correlation of 0/1 labels and 0/1 predictions; 0 when either is constant or empty."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    if y.size == 0 or len(np.unique(y)) < 2 or len(np.unique(p)) < 2:
        return 0.0
    return float(matthews_corrcoef(y, p, sample_weight=sample_weight))


def prob_mcc(labels: ArrayLike, probs: ArrayLike) -> float:
    """MCC of probabilities under the validator's rounding (:func:`to_label`)."""
    return mcc(labels, to_label(probs))


def auc(labels: ArrayLike, probs: ArrayLike) -> float | None:
    """ROC AUC (ties count half); None when only one class is present."""
    y = np.asarray(labels, dtype=np.int64)
    if y.size == 0 or len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, np.asarray(probs, dtype=np.float64)))


def brier(labels: ArrayLike, probs: ArrayLike) -> float | None:
    """Mean squared error of P(roadwork) against the 0/1 labels; None when there are none."""
    y = np.asarray(labels, dtype=np.int64)
    if y.size == 0:
        return None
    with warnings.catch_warnings():  # one class present: sklearn warns, the number is still the mean
        warnings.simplefilter("ignore")
        return float(brier_score_loss(y, np.asarray(probs, dtype=np.float64), pos_label=1))


def ece(labels: ArrayLike, probs: ArrayLike, bins: int = ECE_BINS) -> float:
    """Expected calibration error of P(roadwork) over ``bins`` equal-width bins."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(p[m].mean() - y[m].mean())
    return float(total)


def _r4(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


def binary_metrics(labels: ArrayLike, probs: ArrayLike) -> dict[str, Any]:
    """n, positives, negatives, mcc, accuracy, auc, brier, ece, recall, fpr (4 decimals) of probabilities
    against labels, thresholded by the validator's rule."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    pred = to_label(p)
    pos, neg = int(y.sum()), int((1 - y).sum())
    return {
        "n": len(y),
        "positives": pos,
        "negatives": neg,
        "mcc": _r4(mcc(y, pred)) if pos and neg else None,
        "accuracy": _r4(float((pred == y).mean())) if len(y) else None,
        "auc": _r4(auc(y, p)) if len(y) else None,
        "brier": _r4(brier(y, p)) if len(y) else None,
        "ece": _r4(ece(y, p)) if len(y) else None,
        "recall": _r4(float(pred[y == 1].mean())) if pos else None,
        "fpr": _r4(float(pred[y == 0].mean())) if neg else None,
    }


@dataclass
class WindowMetrics:
    n: int  # valid answers in the window
    failures: int
    accuracy: float
    mcc: float


def window_metrics(history: Sequence[tuple[float, int]], window: int) -> WindowMetrics:
    """Metrics over the last ``window`` (prediction, label) entries; failures take slots, then are dropped."""
    recent = list(history)[-window:] if window else list(history)
    valid = [(p, y) for p, y in recent if p != FAILED]
    if not valid:
        return WindowMetrics(0, len(recent), 0.0, 0.0)
    labels = np.asarray([int(y) for _, y in valid])
    preds = to_label([p for p, _ in valid])
    acc = float(np.mean(labels == preds))
    return WindowMetrics(len(valid), len(recent) - len(valid), acc, max(0.0, mcc(labels, preds)))


def reward_from_history(history: Sequence[tuple[float, int]]) -> float:
    """The validator's reward of a miner's rolling (prediction, label) history."""
    m100 = window_metrics(history, WINDOW_MCC)
    m10 = window_metrics(history, WINDOW_ACC)
    return float((0.5 * m100.mcc + 0.5 * m10.accuracy) ** 3)
