"""Where the cascade's tiers run, and on which engine the classifiers run there.

``device`` (top-level setting): ``auto`` (the first GPU when torch sees one, else the CPU), ``cpu``,
``cuda`` or ``cuda:N``. The cascade builder (``EarlyExitRouter.from_settings``) resolves it once and
hands it to every tier it builds; a tier's own ``device`` option still wins (to pin a tier elsewhere).

Classifier tiers (kind ``classifier``: one saved safetensors classifier each) run on an engine chosen by
``cascade.engine``:

* ``fast`` — ``FastImageEngine`` (``models/engines/fast_gpu.py``): nvJPEG decode, fp16, CUDA graphs; the default
  on CUDA;
* ``onnx`` — ``OnnxCpuEngine`` (``models/engines/onnx_cpu.py``): the same weights exported to ONNX (cached by
  weight hash under ``~/.cache/roadminer/onnx``) and run by ONNX Runtime; the default on the CPU when
  ``onnxruntime`` is installed;
* ``torch`` — ``ClassifierTier``: plain PyTorch on the device; the CPU default without ``onnxruntime``,
  and what ``auto`` falls back to (with a warning naming the reason) when an ONNX export fails.

The fast engine on CUDA decodes the received payloads itself (nvJPEG); on a CPU the engine tiers read the
pixels the miner decoded (policy-checked Pillow), like the torch tier.

All three answer within 0.01 of each other on real photos (``tests/unit/models/test_placement.py``): the engines
resize with antialiased bilinear interpolation where the torch tier uses PIL's bilinear resize.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from roadminer.models.base import Tier

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
ENGINES = ("auto", "torch", "onnx", "fast")
DEFAULT_WEIGHTS = "roadwork_classifier.safetensors"  # the shipped EfficientNet-Lite0 classifier


class PlacementError(ValueError):
    """A device or engine that cannot be used here; the message says why and what to set instead."""


@dataclass(frozen=True)
class Placement:
    """Where the cascade's tiers run (built once by ``EarlyExitRouter.from_settings``): the resolved
    ``device``, the classifiers' ``engine``, and the engine threads per process when worker processes share
    the cores. ``models.base.build_tier`` asks it to fill what a tier's options leave open."""

    device: str
    engine: str = "auto"
    threads: int | None = None

    def tier_kwargs(self, kind: str, typed: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The constructor arguments of one tier with the placement applied: ``device`` where the kind takes
        one and its options gave none (``device: null``), ``engine`` for classifiers, ``threads`` where the
        kind takes them and its options did not set them."""
        out = dict(kwargs)
        fields = type(typed).model_fields
        plan_only = getattr(typed, "plan_only", frozenset())
        if "device" in fields and "device" not in plan_only and out.get("device") is None:
            out["device"] = self.device
        if kind == "classifier":
            out["engine"] = self.engine
        if self.threads and "threads" in fields and "threads" not in typed.model_fields_set:
            out["threads"] = self.threads
        return out


def resolve_device(device: str | None) -> str:
    """``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` -> the device tiers run on (``cpu``, ``cuda``, ``cuda:N``).

    Raises ``PlacementError`` for a malformed name, or CUDA asked for where torch sees no (such) GPU."""
    d = (device or "auto").strip().lower()
    if not DEVICE_PATTERN.match(d):
        raise PlacementError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
    if d == "cpu":
        return "cpu"
    try:
        import torch
    except ImportError:
        if d == "auto":
            return "cpu"
        raise PlacementError(f"device {d} needs torch with CUDA; torch is not installed") from None
    available = torch.cuda.is_available()
    if d == "auto":
        return "cuda" if available else "cpu"
    if not available:
        raise PlacementError(f"device {d} asked for, but torch {torch.__version__} sees no CUDA GPU here "
                             "(set device: auto or cpu)")
    index = int(d.split(":", 1)[1]) if ":" in d else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise PlacementError(f"device {d} asked for, but torch sees {count} GPU(s) (cuda:0..cuda:{count - 1})")
    return d


def onnx_runtime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def choose_engine(device: str, engine: str = "auto") -> str:
    """The classifier engine for ``device`` (already resolved): ``fast``, ``onnx`` or ``torch``."""
    e = (engine or "auto").strip().lower()
    if e not in ENGINES:
        raise PlacementError(f"cascade.engine {engine!r} is not one of {', '.join(ENGINES)}")
    on_gpu = device.startswith("cuda")
    if e == "auto":
        return "fast" if on_gpu else ("onnx" if onnx_runtime_available() else "torch")
    if e == "onnx":
        if on_gpu:
            raise PlacementError("cascade.engine onnx runs on the CPU only (device is " + device + "); use fast "
                                 "or torch on a GPU")
        if not onnx_runtime_available():
            raise PlacementError("cascade.engine onnx needs onnxruntime (pip install 'roadminer[cpu]')")
    return e


def resolve_weights(weights: str | Path | None) -> Path:
    """A classifier weights path: absolute or relative to the working directory, else a file name in the
    shipped models folder; the shipped default model when None."""
    from roadminer.core.config import ASSETS_DIR

    models = ASSETS_DIR / "models"
    path = Path(weights) if weights else models / DEFAULT_WEIGHTS
    if not path.is_absolute() and not path.exists() and (models / path).exists():
        path = models / path
    return path


def build_classifier_tier(
    name: str,
    weights: str | Path | None = None,
    device: str = "cpu",
    engine: str = "torch",
    batch_size: int = 64,
    threads: int | None = None,
    tta_flip: bool = False,
) -> Tier:
    """A ``classifier`` tier on ``device`` through ``engine`` (``auto`` chooses by device, see above).

    Without a device/engine from the cascade builder this is the plain PyTorch tier on the CPU."""
    from roadminer.models.classifier import ClassifierTier

    dev = resolve_device(device)
    requested = (engine or "auto").strip().lower()
    chosen = choose_engine(dev, requested)
    path = resolve_weights(weights)
    if tta_flip and chosen != "torch":  # the engines have no flip test-time augmentation
        logger.info("tier {}: tta_flip runs on the torch engine", name)
        chosen = "torch"
    if chosen == "torch":
        return ClassifierTier(name=name, weights=path, device=dev, batch_size=batch_size, threads=threads,
                              tta_flip=tta_flip)
    try:
        from roadminer.models.engines.classifier import EngineClassifierTier

        return EngineClassifierTier(name, path, chosen, dev, batch_size=batch_size, threads=threads)
    except (FileNotFoundError, PlacementError):
        raise
    except Exception as e:
        if requested != "auto":
            raise
        reason = f"{type(e).__name__}: {e}"
        logger.warning("tier {}: the {} engine failed to start ({}); running on torch instead", name, chosen, reason)
        tier = ClassifierTier(name=name, weights=path, device=dev, batch_size=batch_size, threads=threads)
        tier.engine_fallback = reason  # type: ignore[attr-defined]
        return tier
