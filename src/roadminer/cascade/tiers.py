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


def build_tier(kind: str, name: str, options: dict[str, Any] | None = None, **context: Any) -> Tier:
    _load_builtin_tiers()
    if kind not in _REGISTRY:
        raise KeyError(f"unknown tier kind {kind!r}; known: {sorted(_REGISTRY)}")
    tier = _REGISTRY[kind](name=name, **(options or {}), **context)
    return tier


def _load_builtin_tiers() -> None:
    # Imported lazily so that torch-free processes (protocol tests, simulator client) stay light.
    from roadminer.models import colour  # noqa: F401

    try:
        from roadminer.models import classifier  # noqa: F401
    except ImportError:
        pass


def clip_prob(p: np.ndarray | float) -> np.ndarray:
    """Clip into (0,1) and move exact 0.5 off the validator's rounding tie (0.5 counts as "no")."""
    arr = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.where(arr == 0.5, 0.5 - EPS, arr)
