"""Calibration of a classifier's logits: temperature + bias for a 50/50 prior, and a decision threshold.

Validators send roadwork and no-roadwork images 50/50, while a held-out set rarely is balanced, so the fit
weights both labels equally. The result maps onto ``cascade.temperature``, ``cascade.bias`` and
``cascade.threshold`` (the router computes ``sigmoid(z / T + b)`` and moves ``threshold`` onto 0.5).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from roadminer.core.scoring import binary_metrics, mcc, to_label


def _balanced_w(y: np.ndarray) -> np.ndarray:
    pos, neg = max(1, int(y.sum())), max(1, int((1 - y).sum()))
    return np.where(y == 1, 0.5 / pos, 0.5 / neg) * len(y)


def _nll(z: np.ndarray, y: np.ndarray, w: np.ndarray, a: float, b: float) -> float:
    t = a * z + b
    return float(np.sum(w * (np.logaddexp(0, t) - y * t)) / np.sum(w))


def fit_temperature(z: np.ndarray, y: np.ndarray, iters: int = 100) -> tuple[float, float]:
    """Class-balanced Platt fit ``sigmoid(a z + b)`` by damped Newton steps; returns ``(T = 1/a, b)``."""
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = _balanced_w(y)
    a, b = 1.0, 0.0
    loss = _nll(z, y, w, a, b)
    for _ in range(iters):
        p = 0.5 * (1 + np.tanh(0.5 * (a * z + b)))  # overflow-free sigmoid
        g = np.array([np.sum(w * (p - y) * z), np.sum(w * (p - y))])
        hd = w * p * (1 - p)
        h = np.array([[np.sum(hd * z * z), np.sum(hd * z)], [np.sum(hd * z), np.sum(hd)]]) + 1e-6 * np.eye(2)
        step = np.linalg.solve(h, g)
        scale = 1.0
        while scale > 1e-4:  # backtracking: never accept a step that raises the loss
            na, nb = a - scale * step[0], b - scale * step[1]
            new = _nll(z, y, w, na, nb)
            if new <= loss:
                break
            scale *= 0.5
        else:
            break
        a, b, done = na, nb, loss - new < 1e-10
        loss = new
        if done:
            break
    a = float(np.clip(a, 1e-3, 1e3))  # a <= 0 would mean an inverted model; keep the map monotone
    return 1.0 / a, float(b)


def balanced_mcc(y: np.ndarray, pred: np.ndarray) -> float:
    """MCC of 0/1 predictions on a class-balanced reweighting of the rows (the validators' 50/50 prior)."""
    return mcc(y, pred, sample_weight=_balanced_w(np.asarray(y)))


def best_threshold(p: np.ndarray, y: np.ndarray, lo: float = 0.2, hi: float = 0.8) -> float:
    """Threshold on calibrated probabilities that maximises MCC on a class-balanced resampling (50/50
    prior), searched in [lo, hi] and smoothed over neighbouring candidates to resist noise."""
    cands = np.linspace(lo, hi, 61)
    scores = [balanced_mcc(y, (p > t).astype(int)) for t in cands]
    smooth = np.convolve(np.asarray(scores), np.ones(5) / 5, mode="same")
    return float(cands[int(np.argmax(smooth))])


def fit_calibration(z: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Temperature, bias and threshold from held-out logits, with Brier/ECE before and after."""
    z = np.asarray(z, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    if len(set(y.tolist())) < 2:
        return {"temperature": 1.0, "bias": 0.0, "threshold": 0.5, "note": "hold-out lacks a label; identity"}
    temp, bias = fit_temperature(z, y)
    p_raw = 1 / (1 + np.exp(-z))
    p_cal = 1 / (1 + np.exp(-(z / temp + bias)))
    thr = best_threshold(p_cal, y)
    shift = -np.log(thr / (1 - thr))
    p_final = 1 / (1 + np.exp(-(z / temp + bias + shift)))
    return {
        "temperature": round(temp, 4),
        "bias": round(bias, 4),
        "threshold": round(thr, 4),
        "n": len(y),
        "raw": binary_metrics(y, p_raw),
        "calibrated": binary_metrics(y, p_cal),
        "final": binary_metrics(y, p_final),
        "balanced_mcc_final": round(balanced_mcc(y, to_label(p_final)), 4),
    }
