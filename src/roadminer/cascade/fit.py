"""Fit the cascade on a calibration split: stacking weights, then exit thresholds.

The thresholds are chosen greedily, earliest tier first: for tier ``k`` the lowest confidence threshold
(= the most early exits) whose cascade MCC on the calibration split is not below the MCC of running
every tier (minus an optional tolerance). Works for any number of tiers; the inputs are the answers of
every tier on every calibration image: from running the tiers (``collect_tier_outputs``) or precomputed,
e.g. out-of-fold predictions of a grouped cross-validation (``grouped_cv`` scores the whole fit that way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from roadminer.cascade.consensus import ConsensusParams, fit_stacking
from roadminer.core.scoring import prob_mcc


def disagreement(tier_probs: np.ndarray, k: int) -> np.ndarray:
    """True where the answers of tiers ``0..k`` fall on different sides of 0.5."""
    p = np.asarray(tier_probs, dtype=np.float64)[:, : k + 1]
    yes = np.where(np.isfinite(p), p > 0.5, False).any(axis=1)
    no = np.where(np.isfinite(p), p <= 0.5, False).any(axis=1)
    return yes & no


@dataclass
class Simulation:
    prob: np.ndarray  # final pooled P per image
    exit_index: np.ndarray  # index of the tier after which each image left


def simulate(params: ConsensusParams, tier_probs: np.ndarray,
             exit_confidence: list[float | None] | None = None,
             force_continue: np.ndarray | None = None, no_exit_on_disagreement: bool = False) -> Simulation:
    """Replay the router's early-exit rule on precomputed answers of every tier."""
    probs = np.asarray(tier_probs, dtype=np.float64)
    n, t = probs.shape
    conf = params.exit_confidence if exit_confidence is None else exit_confidence
    out = np.full(n, np.nan)
    exit_index = np.full(n, t - 1)
    active = np.ones(n, dtype=bool)
    for k in range(t):
        pk = params.stage_prob(k, probs[:, : k + 1])
        if k == t - 1:
            out[active] = pk[active]
            break
        thr = conf[k]
        if thr is None:
            continue
        leave = active & (np.maximum(pk, 1 - pk) >= thr)
        if force_continue is not None:
            leave &= ~force_continue
        if no_exit_on_disagreement and k > 0:
            leave &= ~disagreement(probs, k)
        out[leave] = pk[leave]
        exit_index[leave] = k
        active &= ~leave
    return Simulation(prob=out, exit_index=exit_index)


@dataclass
class FitReport:
    tiers: list[str]
    n: int
    mcc_all_tiers: float
    mcc_cascade: float
    mcc_single: dict[str, float]
    exit_rate: dict[str, float]  # share of images that left after each tier
    reach_rate: dict[str, float]  # share of images that ran each tier
    exit_confidence: list[float | None]
    relative_cost: float | None = None  # expected cost / cost of running every tier
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _report(params: ConsensusParams, probs: np.ndarray, y: np.ndarray, sim: Simulation,
            tier_cost: list[float] | None) -> FitReport:
    n, t = probs.shape
    names = params.tiers
    full = params.stage_prob(t - 1, probs)
    exit_rate = {names[k]: float(np.mean(sim.exit_index == k)) for k in range(t)}
    reach = {names[k]: float(np.mean(sim.exit_index >= k)) for k in range(t)}
    rel = None
    if tier_cost is not None and sum(tier_cost) > 0:
        rel = float(sum(reach[names[k]] * tier_cost[k] for k in range(t)) / sum(tier_cost))
    return FitReport(
        tiers=list(names), n=int(n), mcc_all_tiers=prob_mcc(y, full), mcc_cascade=prob_mcc(y, sim.prob),
        mcc_single={names[k]: prob_mcc(y, probs[:, k]) for k in range(t)}, exit_rate=exit_rate,
        reach_rate=reach, exit_confidence=list(params.exit_confidence), relative_cost=rel,
    )


def fit_thresholds(params: ConsensusParams, tier_probs: np.ndarray, labels: np.ndarray,
                   tolerance: float = 0.0, max_candidates: int = 256,
                   force_continue: np.ndarray | None = None, no_exit_on_disagreement: bool = False,
                   tier_cost: list[float] | None = None) -> tuple[ConsensusParams, FitReport]:
    """Greedy per-tier thresholds: each as low as the MCC constraint allows. Returns new params."""
    probs = np.asarray(tier_probs, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    t = probs.shape[1]
    if not np.all(np.isfinite(probs)):
        raise ValueError("threshold fitting needs every tier's answer on every image")
    target = prob_mcc(y, params.stage_prob(t - 1, probs)) - tolerance
    conf: list[float | None] = [None] * t
    kw = dict(force_continue=force_continue, no_exit_on_disagreement=no_exit_on_disagreement)
    for k in range(t - 1):
        pk = params.stage_prob(k, probs[:, : k + 1])
        c = np.maximum(pk, 1 - pk)
        cands = np.unique(c)
        if cands.size > max_candidates:
            cands = np.unique(np.quantile(c, np.linspace(0, 1, max_candidates)))
        best: float | None = None
        for thr in cands:  # ascending: the first that keeps the MCC has the most exits
            trial = list(conf)
            trial[k] = float(thr)
            sim = simulate(params, probs, trial, **kw)
            if prob_mcc(y, sim.prob) >= target - 1e-12:
                best = float(thr)
                break
        # Nudge just below the found value so the float that qualified still exits after a JSON round trip.
        conf[k] = None if best is None else float(np.nextafter(best, 0.0))
    fitted = ConsensusParams(tiers=params.tiers, stages=params.stages, exit_confidence=conf,
                             fitted=params.fitted, report=params.report)
    sim = simulate(fitted, probs, **kw)
    rep = _report(fitted, probs, y, sim, tier_cost)
    rep.extra["tolerance"] = tolerance
    fitted.report = rep.to_json()
    return fitted, rep


def fit_cascade(tier_probs: np.ndarray, labels: np.ndarray, tiers: list[str], *, c: float = 1.0,
                stacking: bool = True, weights: list[float] | None = None, tolerance: float = 0.0,
                tier_cost: list[float] | None = None, no_exit_on_disagreement: bool = False,
                force_continue: np.ndarray | None = None,
                class_weight: str | None = None,
                mcc_threshold: bool = False) -> tuple[ConsensusParams, FitReport]:
    """Stacking weights (or the given weights) then exit thresholds, on one calibration split."""
    if stacking:
        params = fit_stacking(tier_probs, labels, tiers, c=c, class_weight=class_weight,
                              mcc_threshold=mcc_threshold)
    else:
        params = ConsensusParams.unfitted(tiers, weights or [1.0] * len(tiers))
    return fit_thresholds(params, tier_probs, labels, tolerance=tolerance, tier_cost=tier_cost,
                          no_exit_on_disagreement=no_exit_on_disagreement, force_continue=force_continue)


@dataclass
class GroupedCV:
    """Leave-one-group-out scores of the whole cascade fit (stacking + exit thresholds)."""

    prob: np.ndarray  # [N] cascade answer with early exit, from a fit that never saw the row's group
    prob_all: np.ndarray  # [N] pooled answer of every tier (no early exit), same fits
    stage_probs: np.ndarray  # [N, T] answer of stage k (tiers 0..k pooled), same fits
    exit_index: np.ndarray  # [N] tier after which the row left
    folds: dict[str, Any]  # per held-out group: fitted weights, thresholds and the fit's own report


def grouped_cv(tier_probs: np.ndarray, labels: np.ndarray, groups: np.ndarray, tiers: list[str],
               **fit_kw: Any) -> GroupedCV:
    """Fit the cascade (``fit_cascade``, same arguments) on all groups but one and replay it on the held-out
    group, for every group: an honest estimate of the stacked, early-exiting cascade on an unseen group
    (the answers in ``tier_probs`` should themselves be out-of-fold for the same groups)."""
    probs = np.asarray(tier_probs, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    groups = np.asarray(groups)
    n, t = probs.shape
    out = GroupedCV(prob=np.full(n, np.nan), prob_all=np.full(n, np.nan), stage_probs=np.full((n, t), np.nan),
                    exit_index=np.full(n, t - 1), folds={})
    for g in sorted(set(groups.tolist())):
        va = groups == g
        params, rep = fit_cascade(probs[~va], y[~va], tiers, **fit_kw)
        sim = simulate(params, probs[va], no_exit_on_disagreement=fit_kw.get("no_exit_on_disagreement", False))
        out.prob[va] = sim.prob
        out.exit_index[va] = sim.exit_index
        for k in range(t):
            out.stage_probs[va, k] = params.stage_prob(k, probs[va, : k + 1])
        out.prob_all[va] = out.stage_probs[va, t - 1]
        out.folds[str(g)] = {
            "n_fit": int((~va).sum()),
            "n_held": int(va.sum()),
            "stages": [{"weights": s.weights, "bias": s.bias} for s in params.stages],
            "exit_confidence": params.exit_confidence,
            "fit_mcc_all_tiers": rep.mcc_all_tiers,
            "fit_mcc_cascade": rep.mcc_cascade,
            "fit_exit_rate": rep.exit_rate,
        }
    return out


def collect_tier_outputs(router: Any, rgb_images: list[np.ndarray], payloads: list[bytes] | None = None,
                         batch_size: int = 32, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Every tier's answer on every image (no early exit): [N, T] probabilities (NaN where a tier
    failed) and the mean seconds per image of each tier [T], the per-tier cost used in reports."""
    import hashlib

    from rich.progress import Progress

    from roadminer.models.base import ImageBatch

    n, t = len(rgb_images), len(router.tiers)
    out = np.full((n, t), np.nan)
    secs = np.zeros(t)
    with Progress(disable=not progress) as bar:
        task = bar.add_task("tier outputs", total=n)
        for start in range(0, n, batch_size):
            rgb = rgb_images[start : start + batch_size]
            pay = payloads[start : start + batch_size] if payloads else []
            keys = [hashlib.sha256(b).hexdigest() for b in pay]
            res = router.predict(ImageBatch(rgb=rgb, payloads=pay, keys=keys), early_exit=False)
            for k, tier in enumerate(router.tiers):
                if tier.name in res.tier_probs:
                    out[start : start + len(rgb), k] = res.tier_probs[tier.name]
                secs[k] += res.tier_seconds.get(tier.name, 0.0)
            bar.advance(task, len(rgb))
    return out, secs / max(n, 1)
