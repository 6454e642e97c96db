"""Classifier tiers on the fast engines: a saved classifier (``roadminer.models.classifier`` format) run by
``FastImageEngine`` (CUDA: nvJPEG, fp16, CUDA graphs) or ``OnnxCpuEngine`` (ONNX Runtime on the CPU).
``roadminer.models.placement.build_classifier_tier`` chooses between these and the torch tier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from roadminer.models.base import ImageBatch, TierOutput
from roadminer.models.classifier import load_classifier
from roadminer.models.engines.fast_gpu import LITE_MEAN, LITE_STD, Backbone, EngineTier, FastImageEngine
from roadminer.models.engines.onnx_cpu import OnnxCpuEngine
from roadminer.models.footprint import module_footprint
from roadminer.models.placement import PlacementError


class EngineClassifierTier(EngineTier):
    """A saved classifier run by the fast GPU engine or the ONNX CPU engine (same weights, same answers)."""

    def __init__(self, name: str, path: Path, engine: str, device: str, batch_size: int = 64,
                 threads: int | None = None) -> None:
        self.name = name
        self.path = path
        self.engine_name = engine
        model, prep, extra = load_classifier(path)  # fp32 on the CPU; the engine moves/casts/exports it
        mean = tuple(float(v) for v in prep.get("mean", LITE_MEAN))
        std = tuple(float(v) for v in prep.get("std", LITE_STD))
        arch = str(extra.get("arch", path.stem))
        backbone = Backbone(model, mean, std, int(prep.get("input_size", 224)), arch)  # type: ignore[arg-type]
        self.arch = arch
        self.weights_version = str(extra.get("version") or path.stem)
        self._cpu_footprint = module_footprint(model)  # what the ONNX session holds (fp32 weights)
        if engine == "fast":
            self.engine = FastImageEngine(backbone, device=device, max_batch=max(1, int(batch_size)))
        elif engine == "onnx":
            self.engine = OnnxCpuEngine(backbone, threads=int(threads or 0), max_batch=max(1, int(batch_size)))
        else:
            raise PlacementError(f"unknown classifier engine {engine!r}")
        # The weights' version names the model (result cache, dashboards); the engine is in describe().
        self.version = self.weights_version
        # On CUDA the fast engine decodes the payload itself (nvJPEG). Elsewhere the tier reads the pixels
        # the miner decoded (policy-checked Pillow, EXIF applied, as for the torch tier): a corrupt image
        # is then refused with 400 before batching, and nothing is decoded twice.
        self.needs_rgb = not (engine == "fast" and str(device).startswith("cuda"))

    def predict(self, batch: ImageBatch) -> TierOutput:
        if not self.needs_rgb:
            return super().predict(batch)
        return TierOutput(prob=self._predict_decoded(batch))

    def footprint(self) -> dict[str, Any] | None:
        """Device, dtype, parameters and bytes of what runs (the planner books this)."""
        if self.engine_name == "fast":
            return module_footprint(self.engine.head)
        fp = dict(self._cpu_footprint or {})
        fp["device"] = "cpu"
        return fp

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"kind": "ClassifierTier", "engine": self.engine_name, "arch": self.arch,
                  "weights": str(self.path), "runtime": d.get("runtime", "torch")})
        return d
