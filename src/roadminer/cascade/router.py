"""Runs the configured tiers in order with early exit and falls back to a cheaper answer on failure.

The consensus/early-exit policy is deliberately small here; calibration and stacking weights come from
the model card (see cascade/consensus.py when present).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from loguru import logger

from roadminer.cascade.tiers import ImageBatch, Tier, build_tier, clip_prob
from roadminer.config import CascadeConfig


@dataclass
class CascadeResult:
    prob: np.ndarray  # [N] final P(roadwork), never exactly 0.5
    exit_tier: list[str]  # name of the last tier that ran for each image
    tier_probs: dict[str, np.ndarray] = field(default_factory=dict)  # per tier, NaN where it did not run
    errors: list[str] = field(default_factory=list)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


class EarlyExitRouter:
    """Ordered tiers; an image leaves after tier k when the pooled probability is confident enough."""

    def __init__(self, tiers: list[Tier], weights: list[float], exit_conf: list[float | None],
                 temperature: float = 1.0, bias: float = 0.0, threshold: float = 0.5) -> None:
        if not tiers:
            raise ValueError("the cascade needs at least one tier")
        self.tiers = tiers
        self.weights = weights
        self.exit_conf = exit_conf
        self.temperature = temperature
        self.bias = bias
        # Shift so that the configured decision threshold lands on 0.5 for the validator's rounding.
        self.threshold_shift = -float(_logit(np.array([threshold]))[0]) if threshold != 0.5 else 0.0

    @classmethod
    def from_config(cls, cfg: CascadeConfig, **context: Any) -> EarlyExitRouter:
        tiers, weights, conf = [], [], []
        for t in cfg.tiers:
            if not t.enabled:
                continue
            tiers.append(build_tier(t.kind, t.name, t.options, **context))
            weights.append(t.weight)
            conf.append(t.exit_confidence)
        return cls(tiers, weights, conf, cfg.temperature, cfg.bias, cfg.threshold)

    @property
    def version(self) -> str:
        return "+".join(f"{t.name}:{t.version}" for t in self.tiers)

    def describe(self) -> list[dict[str, Any]]:
        return [t.describe() for t in self.tiers]

    def warmup(self) -> None:
        for t in self.tiers:
            t.warmup()

    def _calibrate(self, z: np.ndarray) -> np.ndarray:
        z = (z / max(self.temperature, 1e-6)) + self.bias + self.threshold_shift
        return 1.0 / (1.0 + np.exp(-z))

    def predict(self, batch: ImageBatch) -> CascadeResult:
        n = len(batch)
        active = np.arange(n)
        z_sum = np.zeros(n)
        w_sum = np.zeros(n)
        exit_tier = [""] * n
        tier_probs: dict[str, np.ndarray] = {}
        errors: list[str] = []
        for k, tier in enumerate(self.tiers):
            if active.size == 0:
                break
            sub = ImageBatch(
                rgb=[batch.rgb[i] for i in active],
                payloads=[batch.payloads[i] for i in active] if batch.payloads else [],
                keys=[batch.keys[i] for i in active] if batch.keys else [],
            )
            try:
                p = np.asarray(tier.predict(sub).prob, dtype=np.float64)
                if p.shape != (active.size,) or not np.all(np.isfinite(p)):
                    raise ValueError(f"tier returned shape {p.shape} / non-finite values")
            except Exception as e:  # a failing tier never fails the request
                logger.opt(exception=e).warning("tier {} failed on {} images; using earlier answer", tier.name, active.size)
                errors.append(f"{tier.name}: {type(e).__name__}")
                continue
            full = np.full(n, math.nan)
            full[active] = p
            tier_probs[tier.name] = full
            z_sum[active] += self.weights[k] * _logit(p)
            w_sum[active] += self.weights[k]
            for i in active:
                exit_tier[i] = tier.name
            conf = self.exit_conf[k]
            if conf is not None and k < len(self.tiers) - 1:
                pooled = self._calibrate(z_sum[active] / np.maximum(w_sum[active], 1e-9))
                keep = np.maximum(pooled, 1 - pooled) < conf
                active = active[keep]
        z = np.where(w_sum > 0, z_sum / np.maximum(w_sum, 1e-9), 0.0)
        prob = self._calibrate(z)
        # No tier answered for an image: lean "no roadwork" (validator's tie rule), never -1.
        prob = np.where(w_sum > 0, prob, 0.5 - 1e-3)
        exit_tier = [e or "fallback" for e in exit_tier]
        return CascadeResult(prob=clip_prob(prob), exit_tier=exit_tier, tier_probs=tier_probs, errors=errors)
