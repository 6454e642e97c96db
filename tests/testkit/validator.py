"""Shared pieces for the simulator/validator tests: a colour-coded challenge source and miners of known
quality served for real on loopback."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from roadminer.cascade.router import CascadeResult
from roadminer.core.config import load_settings
from roadminer.models.base import ImageBatch, clip_prob
from roadminer.validator.challenges import GeneratorSource

VALIDATOR_URI = "//Alice"


def colour_image(label: int, rng: np.random.Generator) -> Image.Image:
    """Roadwork = orange field, none = blue field (hue survives every augmentation level)."""
    base = np.array([230, 110, 20] if label else [40, 80, 200], dtype=np.float32)
    arr = base + rng.normal(0, 12, size=(160, 200, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def colour_source() -> GeneratorSource:
    return GeneratorSource(colour_image, name="colour-fields")


class QualityPredictor:
    """Reads the colour (always right), then flips a deterministic share of answers (by payload hash)."""

    def __init__(self, flip_share: float) -> None:
        self.flip_share = flip_share

    def predict(self, batch: ImageBatch) -> CascadeResult:
        probs = []
        for i, rgb in enumerate(batch.rgb):
            m = rgb.reshape(-1, 3).mean(axis=0)
            p = 0.9 if m[0] > m[2] else 0.1
            key = (
                batch.keys[i]
                if i < len(batch.keys) and batch.keys[i]
                else hashlib.sha256(rgb.tobytes()).hexdigest()
            )
            if int(key[:8], 16) / 2**32 < self.flip_share:
                p = 1.0 - p
            probs.append(p)
        return CascadeResult(prob=clip_prob(np.asarray(probs)), exit_tier=["quality"] * len(batch))

    def warmup(self) -> None:
        pass


def miner_settings(chain_file: Path, **extra: Any) -> Any:
    over = {
        "server.host": "127.0.0.1",
        "server.port": 0,
        "chain.network": "local",
        "chain.local_config": str(chain_file),
        "guards.rate_limit_per_minute": 1_000_000,
        "guards.rate_limit_burst": 100_000,
        "state.backend": "memory",
    }
    over.update(extra)
    return load_settings(None, over)
