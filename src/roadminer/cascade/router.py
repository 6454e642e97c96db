"""Runs the configured tiers in order with early exit and falls back to a cheaper answer on failure.

After tier ``k`` the answers of tiers ``0..k`` are pooled (``consensus.Stage``: weighted log-odds, or
stacking weights fitted on a calibration split); an image leaves when the pooled probability is outside
``[1-t_k, t_k]``. Difficulty signals keep an image going even when confident: tiers disagreeing on the
side of 0.5, or a dark (low-light) image. A tier that fails, or answers NaN for some images (a VLM
timeout), abstains for those images: their answer pools the tiers that did answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from roadminer.cascade.consensus import ConsensusParams, logit, sigmoid
from roadminer.cascade.fit import disagreement
from roadminer.core.config import CascadeConfig
from roadminer.models.base import ImageBatch, Tier, build_tier, clip_prob

VLM_KINDS = ("vlm_vllm", "vlm_hf")


@dataclass
class CascadeResult:
    prob: np.ndarray  # [N] final P(roadwork), never exactly 0.5
    exit_tier: list[str]  # name of the last tier that answered for each image ("fallback": none did)
    tier_probs: dict[str, np.ndarray] = field(default_factory=dict)  # per tier, NaN where it did not answer
    errors: list[str] = field(default_factory=list)
    # Index (in router.tiers) of the last tier that ran for each image; -1 when none answered.
    exit_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    tier_seconds: dict[str, float] = field(default_factory=dict)  # wall time of each tier on this batch
    tier_images: dict[str, int] = field(default_factory=dict)  # images each tier was given


def mean_luminance(rgb: np.ndarray) -> float:
    """Mean Rec.601 luma in [0, 255] on a strided thumbnail (cheap)."""
    step = max(1, min(rgb.shape[0], rgb.shape[1]) // 64)
    t = rgb[::step, ::step, :3].astype(np.float32)
    return float((0.299 * t[..., 0] + 0.587 * t[..., 1] + 0.114 * t[..., 2]).mean())


class EarlyExitRouter:
    """Ordered tiers; an image leaves after tier k when the pooled probability is confident enough."""

    def __init__(self, tiers: list[Tier], weights: list[float], exit_conf: list[float | None],
                 temperature: float = 1.0, bias: float = 0.0, threshold: float = 0.5, *,
                 consensus: ConsensusParams | None = None, no_exit_on_disagreement: bool = False,
                 low_light_below: float | None = None) -> None:
        if not tiers:
            raise ValueError("the cascade needs at least one tier")
        if len(weights) != len(tiers) or len(exit_conf) != len(tiers):
            raise ValueError("weights and exit_conf need one entry per tier")
        self.tiers = tiers
        self.weights = weights
        names = [t.name for t in tiers]
        if consensus is not None and consensus.tiers != names and consensus.covers_start_of(names):
            logger.info("consensus fitted for tiers {}; tiers {} join it by their configured weights",
                        consensus.tiers, names[len(consensus.tiers):])
            consensus = consensus.extended(names, weights, exit_conf)
        elif consensus is not None and consensus.tiers != names:
            logger.warning("consensus was fitted for tiers {} but the cascade has {}; using plain weights",
                           consensus.tiers, names)
            consensus = None
        self.consensus = consensus or ConsensusParams.unfitted(names, weights, exit_conf)
        self.exit_conf = list(self.consensus.exit_confidence)
        self.temperature = temperature
        self.bias = bias
        self.no_exit_on_disagreement = no_exit_on_disagreement
        self.low_light_below = low_light_below
        # Shift so that the configured decision threshold lands on 0.5 for the validator's rounding.
        self.threshold_shift = -float(logit(threshold)) if threshold != 0.5 else 0.0

    @classmethod
    def from_config(cls, cfg: CascadeConfig, **context: Any) -> EarlyExitRouter:
        tiers, weights, conf = [], [], []
        for t in cfg.tiers:
            if not t.enabled or (t.kind in VLM_KINDS and not cfg.vlm):
                continue
            tiers.append(build_tier(t.kind, t.name, t.options, **context))
            weights.append(t.weight)
            conf.append(t.exit_confidence)
        consensus = None
        if cfg.consensus_file:
            path = Path(cfg.consensus_file)
            if path.is_file():
                consensus = ConsensusParams.load(path)
                if cfg.fitted_exits is False:  # keep the configured thresholds, use only the weights
                    consensus.exit_confidence = conf
            else:
                logger.warning("consensus file {} not found; using configured weights", path)
        return cls(tiers, weights, conf, cfg.temperature, cfg.bias, cfg.threshold, consensus=consensus,
                   no_exit_on_disagreement=cfg.no_exit_on_disagreement, low_light_below=cfg.low_light_below)

    @classmethod
    def from_settings(cls, settings: Any, cascade: CascadeConfig | None = None) -> EarlyExitRouter:
        """The cascade (``cascade``, default ``settings.cascade``) with ``settings.device`` resolved and
        handed to every tier, classifiers on the engine ``cascade.engine`` picks for that device."""
        from roadminer.models.placement import Placement, resolve_device

        cfg = cascade or settings.cascade
        threads = None
        workers = int(getattr(settings.server, "workers", 1) or 1)
        if workers > 1:  # worker processes share the cores: one engine thread pool each, not N
            import os

            threads = max(1, (os.cpu_count() or 1) // workers)
        placement = Placement(resolve_device(settings.device), cfg.engine, threads)
        return cls.from_config(cfg, placement=placement)

    @property
    def version(self) -> str:
        v = "+".join(f"{t.name}:{t.version}" for t in self.tiers)
        return v + ("/stacked" if self.consensus.fitted else "")

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for k, t in enumerate(self.tiers):
            d = t.describe()
            d["exit_confidence"] = self.exit_conf[k]
            d["stage_weights"] = self.consensus.stages[k].weights
            out.append(d)
        return out

    def warmup(self) -> None:
        for t in self.tiers:
            t.warmup()

    def close(self) -> None:
        for t in self.tiers:
            try:
                t.close()
            except Exception as e:  # closing must not stop the others
                logger.warning("closing tier {} failed: {}", t.name, e)

    def _calibrate(self, z: np.ndarray) -> np.ndarray:
        z = (z / max(self.temperature, 1e-6)) + self.bias + self.threshold_shift
        return sigmoid(z)

    def predict(self, batch: ImageBatch, early_exit: bool = True) -> CascadeResult:
        """``early_exit=False`` runs every tier on every image (calibration data for ``fit``)."""
        n, t = len(batch), len(self.tiers)
        answers = np.full((n, t), np.nan)
        active = np.arange(n)
        exit_index = np.full(n, -1)
        final_z = np.full(n, np.nan)
        tier_probs: dict[str, np.ndarray] = {}
        tier_seconds: dict[str, float] = {}
        tier_images: dict[str, int] = {}
        errors: list[str] = []
        hold = np.zeros(n, dtype=bool)
        if early_exit and self.low_light_below is not None:
            hold = np.array([mean_luminance(x) < self.low_light_below for x in batch.rgb], dtype=bool)
        for k, tier in enumerate(self.tiers):
            if active.size == 0:
                break
            sub = batch.subset(active)  # undecoded images stay so until a tier reads them
            t0 = time.perf_counter()
            try:
                p = np.asarray(tier.predict(sub).prob, dtype=np.float64)
                if p.shape != (active.size,):
                    raise ValueError(f"tier returned shape {p.shape} for {active.size} images")
            except Exception as e:  # a failing tier never fails the request
                logger.opt(exception=e).warning("tier {} failed on {} images; using earlier answer",
                                                tier.name, active.size)
                errors.append(f"{tier.name}: {type(e).__name__}")
                p = np.full(active.size, np.nan)
            tier_seconds[tier.name] = time.perf_counter() - t0
            tier_images[tier.name] = int(active.size)
            answered = np.isfinite(p)
            if not answered.all() and answered.any():
                errors.append(f"{tier.name}: no answer for {int((~answered).sum())} images")
            answers[active, k] = np.where(answered, np.clip(p, 0.0, 1.0), np.nan)
            full = np.full(n, np.nan)
            full[active] = answers[active, k]
            tier_probs[tier.name] = full
            exit_index[active[answered]] = k
            got_any = np.isfinite(answers[active, : k + 1]).any(axis=1)
            z = np.where(got_any, self.consensus.stages[k].log_odds(answers[active, : k + 1]), np.nan)
            final_z[active] = z
            thr = self.exit_conf[k]
            if not early_exit or thr is None or k == t - 1:
                continue
            pk = sigmoid(np.nan_to_num(z))
            leave = got_any & (np.maximum(pk, 1 - pk) >= thr) & ~hold[active]
            if self.no_exit_on_disagreement and k > 0:
                leave &= ~disagreement(answers[active], k)
            active = active[~leave]
        answered_any = np.isfinite(final_z)
        prob = self._calibrate(np.nan_to_num(final_z))
        # No tier answered for an image: lean "no roadwork" (validator's tie rule), never -1.
        prob = np.where(answered_any, prob, 0.5 - 1e-3)
        exit_tier = [self.tiers[i].name if i >= 0 else "fallback" for i in exit_index]
        return CascadeResult(prob=clip_prob(prob), exit_tier=exit_tier, tier_probs=tier_probs, errors=errors,
                             exit_index=exit_index, tier_seconds=tier_seconds, tier_images=tier_images)
