"""Fit the colour-cue tier's logistic regression (``assets/models/colour_cue.json``) on labelled photos.

Features are those of :func:`roadminer.models.colour.colour_features`, computed on what a validator sends
(224x224 JPEG q75 views at augmentation levels 0-3, :func:`roadminer.imaging.views.validator_view`).
Rows are weighted so that both labels and all sources count (see :func:`balanced_weights`), and the
report gives leave-one-source-out numbers so the baseline is measured the same way as the classifier.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from roadminer.imaging.views import validator_view
from roadminer.models.colour import FEATURE_NAMES, colour_features
from roadminer.training.data import Sample, balanced_weights, leave_one_out_folds


def _features_one(args: tuple[Sample, int, int]) -> np.ndarray:
    sample, level, seed = args
    view = validator_view(sample.read_pil(), level, np.random.default_rng(seed))
    return colour_features(np.asarray(view))


def compute_features(
    samples: Sequence[Sample], levels: Sequence[int] = (0,), seed: int = 0, workers: int = 2
) -> np.ndarray:
    """``[len(levels), N, 5]`` colour features of each sample's validator view at each level."""
    jobs = [(s, lvl, seed * 1_000_003 + i * 7 + lvl) for lvl in levels for i, s in enumerate(samples)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            feats = list(ex.map(_features_one, jobs, chunksize=32))
    else:
        feats = [_features_one(j) for j in jobs]
    return np.asarray(feats).reshape(len(levels), len(samples), len(FEATURE_NAMES))


def _features_eval_view(args: tuple[Sample, int, int, int]) -> np.ndarray:
    from roadminer.training.train import eval_view

    sample, index, level, seed = args
    return colour_features(np.asarray(eval_view(sample, index, level, seed)))


def oof_view_features(
    samples: Sequence[Sample], levels: Sequence[int], seed: int = 1234, by: str = "source", workers: int = 2
) -> np.ndarray:
    """``[len(levels), N, 5]`` colour features on the very views that ``cross_validate`` scores its held-out
    images on (same folds, same seed), so the colour cue's answers line up with the classifiers' image by
    image and level by level (for stacking)."""
    jobs, where = [], []
    for _, _, va in leave_one_out_folds(samples, by=by):
        for k, lv in enumerate(levels):
            for j, i in enumerate(va):
                jobs.append((samples[i], j, lv, seed))
                where.append((k, i))
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            feats = list(ex.map(_features_eval_view, jobs, chunksize=32))
    else:
        feats = [_features_eval_view(j) for j in jobs]
    out = np.zeros((len(levels), len(samples), len(FEATURE_NAMES)))
    for (k, i), f in zip(where, feats, strict=True):
        out[k, i] = f
    return out


def colour_loso_oof(samples: Sequence[Sample], feats: np.ndarray) -> np.ndarray:
    """Leave-one-source-out probabilities ``[levels, N]`` of the colour cue from features ``[levels, N, 5]``."""
    n_lv = feats.shape[0]
    y = np.array([s.label for s in samples])
    oof = np.zeros((n_lv, len(samples)))
    for held, tr, va in leave_one_out_folds(samples, by="source"):
        # Weights from the training part only: the held-out source's label counts must not shape the fit.
        w = balanced_weights([samples[i] for i in tr])
        spec = _fit(feats[:, tr].reshape(-1, feats.shape[2]), np.tile(y[tr], n_lv), np.tile(w, n_lv))
        oof[:, va] = _predict(spec, feats[:, va])
        logger.debug("colour fold {} done", held)
    return oof


def _fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float = 1.0) -> dict[str, Any]:
    """Weighted L2-regularised logistic regression on standardised features (Newton steps)."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    xs = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = w / w.sum() * len(w)
    beta = np.zeros(xs.shape[1])
    reg = np.full(xs.shape[1], l2)
    reg[-1] = 0.0  # no penalty on the intercept
    for _ in range(100):
        p = 1 / (1 + np.exp(-(xs @ beta)))
        g = xs.T @ (w * (p - y)) + reg * beta
        h = (xs * (w * p * (1 - p))[:, None]).T @ xs + np.diag(reg) + 1e-9 * np.eye(len(beta))
        step = np.linalg.solve(h, g)
        beta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return {
        "coef": beta[:-1].tolist(),
        "intercept": float(beta[-1]),
        "mean": mean.tolist(),
        "scale": scale.tolist(),
    }


def _predict(spec: dict[str, Any], x: np.ndarray) -> np.ndarray:
    z = ((x - np.asarray(spec["mean"])) / np.asarray(spec["scale"])) @ np.asarray(spec["coef"]) + spec[
        "intercept"
    ]
    return 1.0 / (1.0 + np.exp(-z))


def fit_colour_cue(
    samples: Sequence[Sample],
    out: str | Path | None = None,
    levels: Sequence[int] = (0, 1, 2, 3),
    seed: int = 0,
    workers: int = 2,
    feats: np.ndarray | None = None,
) -> dict[str, Any]:
    """Fit on all samples (every level's view is a row), report leave-one-source-out out-of-fold probs."""
    from roadminer.core.scoring import binary_metrics
    from roadminer.training.evaluate import loso_report

    if feats is None:
        feats = compute_features(samples, levels, seed, workers)
    n_lv = feats.shape[0]
    y = np.array([s.label for s in samples])
    w = balanced_weights(samples)
    oof = colour_loso_oof(samples, feats)
    spec = _fit(feats.reshape(-1, feats.shape[2]), np.tile(y, n_lv), np.tile(w, n_lv))
    spec.update(
        {
            "version": "colour-2",
            "features": list(FEATURE_NAMES),
            "levels": list(levels),
            "n": len(samples),
            "pooled_in_sample": binary_metrics(
                np.tile(y, n_lv), _predict(spec, feats.reshape(-1, feats.shape[2]))
            ),
            "leave_one_source_out": loso_report(samples, oof, list(levels)),
        }
    )
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(spec, indent=2) + "\n")
    return spec
