"""Consensus of the tiers that ran: weighted log-odds (geometric-mean) pooling.

An image that leaves the cascade after tier ``k`` has answers from tiers ``0..k`` only, so the pooling
has one *stage* per exit point: ``z_k = b_k + sum_j w_kj * logit(p_j)``. Unfitted, the stage weights
are the configured tier weights normalised to sum 1 (the weighted geometric mean of the odds). Fitted,
each stage is a logistic regression on the validation outputs of its tiers (stacking), which also
calibrates the pooled answer. The parameters are plain JSON stored next to the model card.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LOGIT_CLIP = 1e-6


def logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), LOGIT_CLIP, 1 - LOGIT_CLIP)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


@dataclass
class Stage:
    """Pooling after tiers ``0..len(weights)-1``."""

    weights: list[float]
    bias: float = 0.0

    def log_odds(self, probs: np.ndarray) -> np.ndarray:
        """``probs`` [N, k] answers of the first k tiers; NaN (tier abstained) drops out of the sum and
        the remaining weights are rescaled to keep the stage's total weight."""
        probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
        k = len(self.weights)
        if probs.shape[1] < k:
            raise ValueError(f"stage needs {k} tier answers, got {probs.shape[1]}")
        w = np.asarray(self.weights, dtype=np.float64)
        present = np.isfinite(probs[:, :k])
        z = np.where(present, logit(np.where(present, probs[:, :k], 0.5)), 0.0)
        # Rescale by |w| of the tiers present so a missing answer does not shrink the pooled confidence.
        total, got = np.abs(w).sum(), (np.abs(w) * present).sum(axis=1)
        scale = np.where(got > 0, total / np.maximum(got, 1e-12), 0.0)
        return self.bias + scale * (z * w).sum(axis=1)


@dataclass
class ConsensusParams:
    """Stage ``k`` pools tiers ``0..k``; ``exit_confidence[k]`` exits after stage ``k`` when
    ``max(p, 1-p) >= t`` (``None`` = never). ``tiers`` names the tiers these were fitted on."""

    tiers: list[str]
    stages: list[Stage]
    exit_confidence: list[float | None] = field(default_factory=list)
    fitted: bool = False
    report: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def unfitted(cls, tiers: list[str], weights: list[float],
                 exit_confidence: list[float | None] | None = None) -> ConsensusParams:
        stages = []
        for k in range(1, len(tiers) + 1):
            w = np.asarray(weights[:k], dtype=np.float64)
            s = w.sum()
            stages.append(Stage(weights=(w / s if s > 0 else np.full(k, 1.0 / k)).tolist()))
        conf = list(exit_confidence) if exit_confidence is not None else [None] * len(tiers)
        return cls(tiers=list(tiers), stages=stages, exit_confidence=conf)

    def covers_start_of(self, tiers: list[str]) -> bool:
        """Fitted for the first tiers of ``tiers`` (and more tiers follow): see ``extended``."""
        return len(self.tiers) < len(tiers) and tiers[: len(self.tiers)] == self.tiers

    def extended(self, tiers: list[str], weights: list[float],
                 exit_confidence: list[float | None]) -> ConsensusParams:
        """This consensus, fitted for the first ``m`` of ``tiers``, carried on to the tiers after them (a VLM
        judge behind the fitted classifiers): stage ``k >= m`` pools the last fitted stage's log-odds, as
        one voice carrying the fitted tiers' configured weight, with tiers ``m..k`` by their configured
        weights. Exits: the fitted ones, except after the last fitted stage, which the fit never scored as
        an exit (its configured ``exit_confidence`` applies), then the configured ones."""
        m = len(self.tiers)
        if not self.covers_start_of(tiers):
            raise ValueError(f"consensus for {self.tiers} does not start the cascade {tiers}")
        last = self.stages[-1]
        fitted_weight = float(sum(weights[:m]))
        stages = list(self.stages)
        for k in range(m, len(tiers)):
            later = [float(w) for w in weights[m : k + 1]]
            total = fitted_weight + sum(later)
            if total <= 0:
                raise ValueError("tier weights must not sum to zero")
            share = fitted_weight / total
            stages.append(Stage(weights=[share * w for w in last.weights] + [w / total for w in later],
                                bias=share * last.bias))
        exits = list(self.exit_confidence[:m])
        if exits[m - 1] is None:
            exits[m - 1] = exit_confidence[m - 1]
        exits += list(exit_confidence[m:])
        report = {**self.report, "extended_to": list(tiers)}
        return ConsensusParams(tiers=list(tiers), stages=stages, exit_confidence=exits, fitted=self.fitted,
                               report=report)

    def stage_prob(self, k: int, probs: np.ndarray) -> np.ndarray:
        return sigmoid(self.stages[k].log_odds(probs))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConsensusParams:
        stages = [Stage(weights=[float(x) for x in s["weights"]], bias=float(s.get("bias", 0.0)))
                  for s in data["stages"]]
        for k, s in enumerate(stages):
            if len(s.weights) != k + 1:
                raise ValueError(f"stage {k} must have {k + 1} weights, has {len(s.weights)}")
        conf = data.get("exit_confidence") or [None] * len(stages)
        if len(conf) != len(stages):
            raise ValueError("exit_confidence must have one entry per stage")
        return cls(tiers=list(data["tiers"]), stages=stages,
                   exit_confidence=[None if c is None else float(c) for c in conf],
                   fitted=bool(data.get("fitted", False)), report=dict(data.get("report", {})))

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> ConsensusParams:
        from roadminer.models import shipped

        return cls.from_json(json.loads(shipped.read_verified(path)))  # a shipped file must match its pin


def fit_stacking(tier_probs: np.ndarray, labels: np.ndarray, tiers: list[str], c: float = 1.0,
                 exit_confidence: list[float | None] | None = None,
                 class_weight: str | None = None, mcc_threshold: bool = False) -> ConsensusParams:
    """One logistic regression per stage on the logits of tiers ``0..k`` (rows with all answers).

    ``tier_probs`` [N, T] from running every tier on a validation split; ``labels`` [N] in {0, 1}.
    L2-regularised (``c`` = inverse strength) so a near-duplicate tier cannot get a wild weight.
    ``class_weight="balanced"`` fits for a 50/50 prior (what validators send) whatever the split's balance.
    ``mcc_threshold`` then moves each stage's bias so that 0.5 (the validator's rounding) falls on the
    threshold that maximises MCC on a 50/50 reweighting (``learning.calibrate.best_threshold``), the same
    rule as a single classifier's calibration; exits stay symmetric around that decision boundary.
    """
    from sklearn.linear_model import LogisticRegression

    probs = np.asarray(tier_probs, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    if probs.ndim != 2 or probs.shape[0] != y.shape[0] or probs.shape[1] != len(tiers):
        raise ValueError(f"tier_probs {probs.shape} does not match {len(y)} labels x {len(tiers)} tiers")
    if len(np.unique(y)) < 2:
        raise ValueError("stacking needs both classes in the labels")
    stages = []
    for k in range(1, len(tiers) + 1):
        rows = np.all(np.isfinite(probs[:, :k]), axis=1)
        if len(np.unique(y[rows])) < 2:
            raise ValueError(f"stage {k - 1}: too few complete rows to fit")
        lr = LogisticRegression(C=c, max_iter=1000, class_weight=class_weight)
        lr.fit(logit(probs[rows, :k]), y[rows])
        stage = Stage(weights=lr.coef_[0].tolist(), bias=float(lr.intercept_[0]))
        if mcc_threshold:
            from roadminer.training.calibrate import best_threshold

            thr = best_threshold(sigmoid(stage.log_odds(probs[rows, :k])), y[rows])
            stage.bias -= float(logit(thr))
        stages.append(stage)
    conf = list(exit_confidence) if exit_confidence is not None else [None] * len(tiers)
    return ConsensusParams(tiers=list(tiers), stages=stages, exit_confidence=conf, fitted=True)
