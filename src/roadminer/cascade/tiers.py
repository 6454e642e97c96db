"""The ``Tier`` interface every model backend implements, and the tier registry.

A tier receives a batch of decoded images and returns P(roadwork) per image. Tiers are synchronous and
run on the batcher's worker thread, never on the event loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EPS = 1e-4


@dataclass
class ImageBatch:
    """One micro-batch. ``rgb`` holds HxWx3 uint8 arrays (any size); ``payloads`` the encoded bytes as
    received (a GPU tier may decode these itself); ``keys`` the sha256 of each payload."""

    rgb: list[np.ndarray]
    payloads: list[bytes] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rgb)


@dataclass
class TierOutput:
    prob: np.ndarray  # float64 [N] in (0, 1)
    extras: dict[str, Any] = field(default_factory=dict)


class Tier(ABC):
    """A model stage of the cascade."""

    name: str = "tier"
    version: str = "0"

    @abstractmethod
    def predict(self, batch: ImageBatch) -> TierOutput: ...

    def warmup(self) -> None:  # noqa: B027 - optional hook
        """Run once at start-up (compile, allocate) so the first request is not slow."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (GPU memory, HTTP sessions)."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": type(self).__name__, "version": self.version}


TierFactory = Callable[..., Tier]
_REGISTRY: dict[str, TierFactory] = {}


def register_tier(kind: str) -> Callable[[TierFactory], TierFactory]:
    def deco(factory: TierFactory) -> TierFactory:
        _REGISTRY[kind] = factory
        return factory

    return deco


# Modules that register a tier kind, imported only when that kind is built (torch/transformers stay
# out of processes that never use them).
_KIND_MODULES: dict[str, str] = {
    "colour": "roadminer.models.colour",
    "classifier": "roadminer.models.classifier",
    "fast_gpu": "roadminer.models.fast_gpu",
    "onnx_cpu": "roadminer.models.onnx_cpu",
    "vlm_vllm": "roadminer.models.vlm_vllm",
    "vlm_hf": "roadminer.models.vlm_hf",
}


def build_tier(kind: str, name: str, options: dict[str, Any] | None = None, **context: Any) -> Tier:
    _load_builtin_tiers(kind)
    if kind not in _REGISTRY:
        raise KeyError(f"unknown tier kind {kind!r}; known: {sorted(set(_REGISTRY) | set(_KIND_MODULES))}")
    tier = _REGISTRY[kind](name=name, **(options or {}), **context)
    return tier


def _load_builtin_tiers(kind: str | None = None) -> None:
    import importlib

    from roadminer.models import colour  # noqa: F401  (the always-available fallback tier)

    if kind is not None and kind not in _REGISTRY and kind in _KIND_MODULES:
        importlib.import_module(_KIND_MODULES[kind])


def clip_prob(p: np.ndarray | float) -> np.ndarray:
    """Clip into (0,1) and move exact 0.5 off the validator's rounding tie (0.5 counts as "no")."""
    arr = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.where(arr == 0.5, 0.5 - EPS, arr)
