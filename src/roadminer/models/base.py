"""The ``Tier`` interface every model backend implements, and the tier registry.

A tier receives a batch of images (decoded, or decoded when it first reads them) and returns
P(roadwork) per image. Tiers are synchronous and run on the batcher's worker thread, never on the event
loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from roadminer.core.config_layers import dotted, plain_message
from roadminer.core.tier_options import TIER_OPTIONS, TierOptions, register_tier_options, validate_tier_options

EPS = 1e-4


class ImageBatch:
    """One micro-batch. ``rgb`` holds HxWx3 uint8 arrays (any size); ``payloads`` the encoded bytes as
    received (a GPU tier may decode these itself); ``keys`` the sha256 of each payload.

    Images may be left undecoded (``None`` in ``rgb``, with a ``decoder`` for the payload bytes): reading
    ``rgb`` or ``image(i)`` decodes them then, once. Tiers that only read ``payloads``
    (``Tier.needs_rgb = False``) never pay for a decode they do not use; ``subset`` keeps them undecoded.
    """

    __slots__ = ("_rgb", "decoder", "keys", "payloads")

    def __init__(
        self,
        rgb: Sequence[np.ndarray | None] | None = None,
        payloads: Sequence[bytes] | None = None,
        keys: Sequence[str] | None = None,
        decoder: Callable[[bytes], np.ndarray] | None = None,
    ) -> None:
        self.payloads: list[bytes] = list(payloads or [])
        self.keys: list[str] = list(keys or [])
        self._rgb: list[np.ndarray | None] = list(rgb) if rgb is not None else [None] * len(self.payloads)
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self._rgb)

    def __repr__(self) -> str:
        return f"ImageBatch(n={len(self)}, decoded={self.decoded_count})"

    @property
    def decoded_count(self) -> int:
        return sum(x is not None for x in self._rgb)

    def image(self, i: int) -> np.ndarray:
        """Image ``i``, decoded now from its payload if it was not yet (the decoder's errors propagate)."""
        img = self._rgb[i]
        if img is None:
            if self.decoder is None or i >= len(self.payloads) or not self.payloads[i]:
                raise ValueError(f"image {i} of the batch is neither decoded nor decodable")
            img = self._rgb[i] = self.decoder(self.payloads[i])
        return img

    @property
    def rgb(self) -> list[np.ndarray]:
        """Every image decoded (undecoded ones are decoded now)."""
        for i, x in enumerate(self._rgb):
            if x is None:
                self.image(i)
        return self._rgb  # type: ignore[return-value]

    @rgb.setter
    def rgb(self, images: Sequence[np.ndarray | None]) -> None:
        self._rgb = list(images)

    def subset(self, index: Sequence[int] | np.ndarray) -> ImageBatch:
        """The images at ``index`` as a new batch, decoded ones shared and undecoded ones left so."""
        idx = [int(i) for i in index]
        return ImageBatch(
            [self._rgb[i] for i in idx],
            [self.payloads[i] for i in idx] if self.payloads else [],
            [self.keys[i] for i in idx] if self.keys else [],
            self.decoder,
        )


@dataclass
class TierOutput:
    prob: np.ndarray  # float64 [N] in (0, 1)
    extras: dict[str, Any] = field(default_factory=dict)


class Tier(ABC):
    """A model stage of the cascade."""

    name: str = "tier"
    version: str = "0"
    # False: the tier reads only ``batch.payloads`` (decodes them itself), so the server need not decode
    # images before batching. Tiers that read ``batch.rgb`` keep the default.
    needs_rgb: bool = True

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


def register_tier(kind: str, options: type[TierOptions] | None = None) -> Callable[[TierFactory], TierFactory]:
    """Register a tier factory. ``options``: the kind's typed options (``core.tier_options.TierOptions``);
    required for a kind that ``core.tier_options`` does not declare."""
    if options is not None:
        register_tier_options(kind, options)
    elif kind not in TIER_OPTIONS:
        raise ValueError(f"tier kind {kind!r} needs its options model: register_tier({kind!r}, options=...)")

    def deco(factory: TierFactory) -> TierFactory:
        _REGISTRY[kind] = factory
        return factory

    return deco


# Modules that register a tier kind, imported only when that kind is built (torch/transformers stay
# out of processes that never use them).
_KIND_MODULES: dict[str, str] = {
    "colour": "roadminer.models.colour",
    "classifier": "roadminer.models.classifier",
    "fast_gpu": "roadminer.models.engines.fast_gpu",
    "onnx_cpu": "roadminer.models.engines.onnx_cpu",
    "vlm_vllm": "roadminer.models.vlm.vllm",
    "vlm_hf": "roadminer.models.vlm.hf",
    "yolo": "roadminer.models.detector",
    "ocr": "roadminer.models.ocr",
}


def build_tier(kind: str, name: str, options: dict[str, Any] | None = None, *, placement: Any = None,
               **context: Any) -> Tier:
    """A tier of ``kind`` built from its options, checked against the kind's typed options first (an
    unknown or ill-typed option is a ``ValueError`` naming it). ``placement`` (the cascade builder's
    ``models.placement.Placement``): where the tier runs, filling what its options leave open (a
    ``device`` of None; the classifiers' engine). ``context``: objects handed to the constructor from code
    (a loaded model), never from a configuration file."""
    _load_builtin_tiers(kind)
    if kind not in _REGISTRY:
        raise KeyError(f"unknown tier kind {kind!r}; known: {sorted(set(_REGISTRY) | set(_KIND_MODULES))}")
    try:
        typed = validate_tier_options(kind, options)
    except ValidationError as e:
        problems = "; ".join(f"options.{dotted(err['loc'])}: {plain_message(err['msg'])}"
                             for err in e.errors(include_url=False))
        raise ValueError(f"tier {name!r} ({kind}): {problems}") from None
    kwargs = typed.tier_kwargs()
    if placement is not None:
        kwargs = placement.tier_kwargs(kind, typed, kwargs)
    return _REGISTRY[kind](name=name, **kwargs, **context)


def _load_builtin_tiers(kind: str | None = None) -> None:
    import importlib

    from roadminer.models import colour  # noqa: F401  (the always-available fallback tier)

    if kind is not None and kind not in _REGISTRY and kind in _KIND_MODULES:
        importlib.import_module(_KIND_MODULES[kind])


def needs_decoded_images(predictor: Any) -> bool:
    """Whether ``predictor`` (a cascade router or a single tier) reads decoded images on its first step:
    its first tier needs ``rgb``, or the router gates on image content (low-light hold). Later tiers
    decode lazily what reaches them."""
    if getattr(predictor, "low_light_below", None) is not None:
        return True
    tiers = getattr(predictor, "tiers", None)
    if tiers:
        return bool(getattr(tiers[0], "needs_rgb", True))
    return bool(getattr(predictor, "needs_rgb", True))


def clip_prob(p: np.ndarray | float) -> np.ndarray:
    """Clip into (0,1) and move exact 0.5 off the validator's rounding tie (0.5 counts as "no")."""
    arr = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.where(arr == 0.5, 0.5 - EPS, arr)
