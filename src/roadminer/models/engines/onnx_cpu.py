"""CPU path for GPU-less miners: the same backbone exported to ONNX (normalisation and sigmoid inside
the graph, uint8 NCHW input) and run by ONNX Runtime, optionally int8-quantised (static QDQ, calibrated
on drawn street-like scenes).

Exports are cached on disk, keyed by a hash of the weights, so a restart does not pay the export again.
Decoding uses the same libjpeg-turbo thread pool as the GPU path.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger

from roadminer.imaging.decode import ImagePolicy
from roadminer.models.base import Tier, clip_prob, register_tier
from roadminer.models.engines.fast_gpu import (
    Backbone,
    EngineTier,
    _ProbHead,
    b64_to_bytes,
    decode_into,
    resolve_backbone,
)

OPSET = 17
LAYOUT = "nhwc-u8"  # part of the export cache key


def default_cache_dir() -> Path:
    return Path(os.environ.get("ROADMINER_CACHE", Path.home() / ".cache" / "roadminer")) / "onnx"


def backbone_digest(backbone: Backbone) -> str:
    h = hashlib.sha256()
    h.update(repr((backbone.name, backbone.mean, backbone.std, backbone.input_size, OPSET, LAYOUT)).encode())
    for k, v in backbone.module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def export_onnx(backbone: Backbone, path: Path) -> Path:
    """uint8 NxSxSx3 -> P(class 1) [N] (fp32 graph; the transpose to NCHW is inside the graph)."""
    import warnings

    head = _ProbHead(backbone.module.float().eval(), backbone.mean, backbone.std, torch.float32, False).eval()
    s = backbone.input_size
    x = torch.zeros((2, s, s, 3), dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(head, (x,), str(tmp), input_names=["image"], output_names=["prob"],
                          dynamic_axes={"image": {0: "n"}, "prob": {0: "n"}}, opset_version=OPSET,
                          dynamo=False)
    os.replace(tmp, path)
    return path


class _SceneCalibration:
    """Calibration batches for static int8 quantisation: drawn street-like scenes, JPEG q75 round trip."""

    def __init__(self, size: int, n: int = 64, batch: int = 8, seed: int = 0) -> None:
        from roadminer.imaging.scenes import scene_jpegs

        raws = scene_jpegs(n, size=size, seed=seed)
        buf = np.empty((n, size, size, 3), dtype=np.uint8)
        pol = ImagePolicy()
        for i, r in enumerate(raws):
            decode_into(r, buf[i], size, pol)
        self._batches = iter([buf[a : a + batch] for a in range(0, n, batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self._batches, None)
        return None if b is None else {"image": b}


def quantize_int8(fp32_path: Path, out_path: Path, size: int) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as td:
        pre = Path(td) / "pre.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        except Exception as e:  # pre-processing only improves quantisation; carry on without it
            logger.debug("quant_pre_process failed ({}); quantising the raw export", e)
            pre = fp32_path
        tmp = out_path.with_suffix(".tmp.onnx")
        quantize_static(str(pre), str(tmp), _SceneCalibration(size), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=[], extra_options={"ActivationSymmetric": False})
        os.replace(tmp, out_path)
    return out_path


class OnnxCpuEngine:
    """ONNX Runtime CPU engine with the fast path's interface (``predict_bytes``/``predict_b64``/...)."""

    def __init__(self, backbone: Backbone, int8: bool = False, threads: int = 0, max_batch: int = 64,
                 decode_threads: int = 0, cache_dir: str | Path | None = None,
                 policy: ImagePolicy | None = None) -> None:
        import onnxruntime as ort

        self.size = backbone.input_size
        self.max_batch = max_batch
        self.int8 = int8
        self.policy = policy or ImagePolicy()
        self.name = backbone.name
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        digest = backbone_digest(backbone)
        fp32 = cache / f"{backbone.name}-{digest}.onnx"
        if not fp32.is_file():
            logger.info("exporting {} to ONNX ({})", backbone.name, fp32)
            export_onnx(backbone, fp32)
        path = fp32
        if int8:
            path = cache / f"{backbone.name}-{digest}-int8.onnx"
            if not path.is_file():
                logger.info("quantising {} to int8 ({})", backbone.name, path)
                quantize_int8(fp32, path, self.size)
        self.model_path = path
        cores = os.cpu_count() or 1
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or cores
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads sleep instead of spinning: the cores are shared with the miner's event loop,
        # the JPEG decoders and (with server.workers) other workers; spinning threads measured 2.7-3x slower
        # answers for the shipped cascade on the 2-core machine (docs/benchmarks.md).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.threads = opts.intra_op_num_threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.decode_threads = decode_threads or max(1, cores)
        self._pool = ThreadPoolExecutor(max_workers=self.decode_threads, thread_name_prefix="roadminer-jpeg")
        self._lock = threading.Lock()

    def _decode(self, raws: Sequence[bytes]) -> np.ndarray:
        n = len(raws)
        buf = np.empty((n, self.size, self.size, 3), dtype=np.uint8)
        per = max(1, math.ceil(n / self.decode_threads))

        def work(a: int) -> None:
            for i in range(a, min(n, a + per)):
                decode_into(raws[i], buf[i], self.size, self.policy)

        for f in [self._pool.submit(work, a) for a in range(0, n, per)]:
            f.result()  # re-raises ImageDecodeError
        return buf

    def _run(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            (prob,) = self.session.run(["prob"], {"image": x})
        return clip_prob(np.asarray(prob, dtype=np.float64).reshape(-1))

    def predict_bytes(self, raws: Sequence[bytes]) -> np.ndarray:
        if not raws:
            return np.zeros(0)
        return np.concatenate([self._run(self._decode(raws[a : a + self.max_batch]))
                               for a in range(0, len(raws), self.max_batch)])

    def predict_b64(self, strings: Sequence[str | bytes]) -> np.ndarray:
        return self.predict_bytes([b64_to_bytes(s) for s in strings])

    def predict_rgb(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if not images:
            return np.zeros(0)
        from roadminer.models.engines.fast_gpu import _fit_hwc

        x = np.ascontiguousarray(np.stack([_fit_hwc(im, self.size) for im in images]))
        step = self.max_batch
        return np.concatenate([self._run(x[a : a + step]) for a in range(0, len(x), step)])

    def stream_b64(self, batches: Any, depth: int = 2) -> Iterator[np.ndarray]:
        for b in batches:
            yield self.predict_b64(b)

    def warmup(self) -> None:
        x = np.zeros((min(8, self.max_batch), self.size, self.size, 3), dtype=np.uint8)
        self._run(x)

    def describe(self) -> dict[str, Any]:
        return {"device": "cpu", "runtime": "onnxruntime", "precision": "int8" if self.int8 else "fp32",
                "threads": self.threads, "decode_threads": self.decode_threads, "max_batch": self.max_batch,
                "model": self.name}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class OnnxCpuTier(EngineTier):
    version = "onnx-1"

    def __init__(self, name: str = "onnx", weights: str | None = None, arch: str = "efficientnet-lite0",
                 int8: bool = False, threads: int = 0, max_batch: int = 64, decode_threads: int = 0,
                 cache_dir: str | Path | None = None) -> None:
        self.name = name
        self.backbone = resolve_backbone({"weights": weights, "arch": arch})
        self.engine = OnnxCpuEngine(self.backbone, int8=int8, threads=threads, max_batch=max_batch,
                                    decode_threads=decode_threads, cache_dir=cache_dir)
        self.version = f"onnx-1:{self.backbone.name}:{'int8' if self.engine.int8 else 'fp32'}"


@register_tier("onnx_cpu")
def _factory(name: str, **options: Any) -> Tier:
    return OnnxCpuTier(name=name, **options)
