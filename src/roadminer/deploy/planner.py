"""GPU memory planner: what each cascade tier needs on a GPU, packed onto the GPUs of one node.

Per tier: weights (parameter count x dtype bytes) + activations at the configured batch + the KV-cache
budget of a VLM (layers x kv_heads x head_dim x 2 (K and V) x tokens x dtype bytes x concurrent
sequences), and one CUDA context per GPU in use. Tiers declare their numbers in ``TierConfig.options``;
missing numbers come from per-kind defaults below. Tiers are packed first-fit decreasing; a placement
that does not fit is refused (the table still shows where it would have gone and by how much it is over).

Units: GiB (2**30 bytes), which is what ``nvidia-smi`` and ``torch.cuda.mem_get_info`` report.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from roadminer.models.footprint import tier_footprint

if TYPE_CHECKING:
    from roadminer.core.config import Settings, TierConfig

GIB = float(1 << 30)
MIB = float(1 << 20)

DTYPE_BYTES: dict[str, float] = {
    "fp32": 4,
    "float32": 4,
    "float": 4,
    "tf32": 4,
    "fp16": 2,
    "float16": 2,
    "half": 2,
    "bf16": 2,
    "bfloat16": 2,
    "fp8": 1,
    "float8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "int8": 1,
    "int4": 0.5,
    "awq": 0.5,
    "gptq": 0.5,
    "nf4": 0.5,
}

# Known backbones -> parameter count, so a tier that names its architecture needs no ``params``.
KNOWN_PARAMS: dict[str, float] = {
    "efficientnet_lite0": 4.65e6,
    "efficientnet-lite0": 4.65e6,
    "efficientnet_lite1": 5.42e6,
    "efficientnet-lite1": 5.42e6,
    "efficientnet_lite2": 6.09e6,
    "efficientnet-lite2": 6.09e6,
    "mobilenetv3_large_100": 5.48e6,
    "resnet50": 25.6e6,
    "convnext_tiny": 28.6e6,
    "convnextv2_base": 88.7e6,
    "convnext_base": 88.6e6,
    "vit_small_patch16_224": 22.1e6,
    "vit_base_patch16_224": 86.6e6,
    "vit_large_patch16_224": 304.3e6,
    "dinov2_vitb14": 86.6e6,
    "dinov2_vitl14": 304.4e6,
    "yolo11n": 2.6e6,
    "yolo11s": 9.4e6,
    "yolo11m": 20.1e6,
    "yolo11l": 25.3e6,
    "yolo11x": 56.9e6,
    "yolov8n": 3.2e6,
    "yolov8s": 11.2e6,
    "yolov8m": 25.9e6,
}

# Defaults per tier kind. ``device: cpu`` kinds take no GPU memory unless a tier says otherwise.
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "colour": {"device": "cpu", "params": 0, "dtype": "fp32", "activation_mb": 0.0},
    "onnx_cpu": {"device": "cpu", "params": 0, "dtype": "fp32", "activation_mb": 0.0},
    "ocr": {"device": "cpu", "params": 0, "dtype": "fp32", "activation_mb": 0.0},  # onnxruntime on the CPU
    "fast_gpu": {"params": 4.65e6, "dtype": "fp16", "activation_mb": 16.0},
    "classifier": {"params": 25e6, "dtype": "fp16", "activation_mb": 24.0},
    "yolo": {"params": 9.4e6, "dtype": "fp16", "activation_mb": 48.0},
    "vlm_hf": {
        "params": 2.2e9,
        "dtype": "bf16",
        "activation_mb": 64.0,
        "kv_layers": 28,
        "kv_heads": 2,
        "head_dim": 128,
        "kv_tokens": 1536,
        "kv_dtype": "bf16",
        "max_num_seqs": 8,
    },
    "vlm_vllm": {
        "params": 7.6e9,
        "dtype": "bf16",
        "activation_mb": 0.0,
        "activation_gb": 2.0,
        "kv_layers": 28,
        "kv_heads": 4,
        "head_dim": 128,
        "kv_tokens": 4096,
        "kv_dtype": "bf16",
        "max_num_seqs": 16,
    },
}
GENERIC_DEFAULTS: dict[str, Any] = {"params": 25e6, "dtype": "fp16", "activation_mb": 32.0}


class PlanError(RuntimeError):
    """The configured tiers do not fit on the configured GPUs."""

    def __init__(self, message: str, plan: Plan) -> None:
        super().__init__(message)
        self.plan = plan


@dataclass
class TierMemory:
    name: str
    kind: str
    device: str  # "gpu", "cpu" or "remote" (served elsewhere, e.g. a vLLM server on its own GPU)
    dtype: str
    params: float
    batch: int
    weights_gib: float
    activations_gib: float
    kv_gib: float
    pinned_gpu: int | None = None
    gpu: int | None = None  # placement
    copies: int = 1  # one per miner worker process (the numbers above are for all copies)
    measured: bool = False  # read from the loaded tier (plan_loaded), not estimated from the options

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.activations_gib + self.kv_gib


@dataclass
class GpuLoad:
    index: int
    capacity_gib: float
    overhead_gib: float
    tiers: list[str] = field(default_factory=list)
    tiers_gib: float = 0.0

    @property
    def used_gib(self) -> float:
        return self.tiers_gib + (self.overhead_gib if self.tiers else 0.0)

    @property
    def free_gib(self) -> float:
        return self.capacity_gib - self.used_gib

    @property
    def fits(self) -> bool:
        # Compare at MiB resolution so that float noise never refuses an exact fit.
        return round(self.used_gib * 1024) <= round(self.capacity_gib * 1024)


@dataclass
class Plan:
    gpus: list[GpuLoad]
    tiers: list[TierMemory]
    gpu_mem_gib: float
    problems: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.problems and all(g.fits for g in self.gpus)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fits": self.fits,
            "gpu_mem_gib": self.gpu_mem_gib,
            "problems": list(self.problems),
            "tiers": [asdict(t) | {"total_gib": t.total_gib} for t in self.tiers],
            "gpus": [
                {
                    "index": g.index,
                    "capacity_gib": g.capacity_gib,
                    "used_gib": g.used_gib,
                    "free_gib": g.free_gib,
                    "overhead_gib": g.overhead_gib if g.tiers else 0.0,
                    "tiers": list(g.tiers),
                    "fits": g.fits,
                }
                for g in self.gpus
            ],
        }


def parse_count(value: Any) -> float:
    """``7e9``, ``"7B"``, ``"86.6M"``, ``"350k"`` -> a parameter count."""
    if isinstance(value, int | float):
        return float(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kKmMbBtT]?)\s*", str(value))
    if not m:
        raise ValueError(f"cannot read a parameter count from {value!r} (e.g. 7e9, '7B', '86.6M')")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2).lower()]
    return float(m.group(1)) * scale


def dtype_bytes(dtype: str) -> float:
    key = str(dtype).lower().replace("torch.", "")
    if key not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {sorted(DTYPE_BYTES)}")
    return DTYPE_BYTES[key]


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, tokens: int, dtype: str, seqs: int) -> float:
    """KV cache of a decoder: K and V per layer, per KV head, per token, per concurrent sequence."""
    return float(layers) * kv_heads * head_dim * 2 * tokens * dtype_bytes(dtype) * seqs


def tier_memory(
    tier: TierConfig, default_batch: int, default_device: str = "cuda", gpu_mem_gib: float | None = None
) -> TierMemory:
    """Memory need of one tier from its options (with per-kind defaults). ``gpu_mem_gib`` sizes the
    share of the card a vLLM server pre-allocates (``gpu_memory_utilization``)."""
    opts: dict[str, Any] = dict(GENERIC_DEFAULTS)
    opts.update(KIND_DEFAULTS.get(tier.kind, {}))
    user = {k: v for k, v in tier.options.items() if v is not None}  # None: not given (device: the top level)
    arch = user.get("arch") or user.get("model") or user.get("backbone")
    if "params" not in user and isinstance(arch, str):
        base = arch.rsplit("/", 1)[-1].split(".")[0].lower()
        if base in KNOWN_PARAMS:
            user["params"] = KNOWN_PARAMS[base]
    if "params" not in user and "weights_gb" not in user and tier.kind == "classifier":
        counted = classifier_params(user.get("weights"))
        if counted:
            user["params"] = counted
    # A tier that overrides activations in one unit must not inherit the default of the other.
    if "activation_mb" in user or "activation_gb" in user:
        opts.pop("activation_mb", None)
        opts.pop("activation_gb", None)
    opts.update(user)

    device = str(opts.get("device", default_device)).lower()
    on_gpu = device.startswith("cuda") or device == "gpu"
    pinned: int | None = None
    if "gpu" in opts and opts["gpu"] is not None:
        pinned = int(opts["gpu"])
    elif on_gpu and ":" in device:
        pinned = int(device.split(":", 1)[1])

    dtype = str(opts.get("dtype", "fp16"))
    # Weights given in GiB make the parameter count moot (shown as 0).
    params = 0.0 if "weights_gb" in user and "params" not in user else parse_count(opts.get("params", 0))
    is_vlm = any(k in opts for k in ("kv_layers",)) or tier.kind.startswith("vlm")
    seqs = int(opts.get("max_num_seqs", opts.get("batch_size", default_batch)))
    batch = seqs if is_vlm else int(opts.get("batch_size", opts.get("max_batch", default_batch)))

    weights = float(opts["weights_gb"]) * GIB if "weights_gb" in opts else params * dtype_bytes(dtype)
    if "activation_gb" in opts:
        acts = float(opts["activation_gb"]) * GIB
    else:
        acts = float(opts.get("activation_mb", 0.0)) * MIB * batch
    if "kv_gb" in opts:
        kv = float(opts["kv_gb"]) * GIB
    elif is_vlm and all(k in opts for k in ("kv_layers", "kv_heads", "head_dim")):
        tokens = int(opts.get("kv_tokens", opts.get("max_model_len", 2048)))
        kv = kv_cache_bytes(
            int(opts["kv_layers"]),
            int(opts["kv_heads"]),
            int(opts["head_dim"]),
            tokens,
            str(opts.get("kv_dtype", dtype)),
            seqs,
        )
    else:
        kv = 0.0
    mem = TierMemory(
        name=tier.name,
        kind=tier.kind,
        device="gpu" if on_gpu else "remote" if device == "remote" else "cpu",
        dtype=dtype,
        params=params,
        batch=batch,
        weights_gib=weights / GIB,
        activations_gib=acts / GIB,
        kv_gib=kv / GIB,
        pinned_gpu=pinned,
    )
    # vLLM pre-allocates a fixed share of the card whatever the model needs.
    util = opts.get("gpu_memory_utilization")
    if on_gpu and util is not None and gpu_mem_gib:
        reserve = float(util) * gpu_mem_gib
        if reserve > mem.total_gib:  # vLLM hands the rest of its share to the KV cache
            mem.kv_gib += reserve - mem.total_gib
    return mem


def classifier_params(weights: Any) -> float | None:
    """Parameter count of a saved classifier, from its safetensors header alone (no tensor is read); None
    when the file is missing or unreadable."""
    import json
    import struct

    from roadminer.models.placement import resolve_weights

    try:
        path = resolve_weights(weights)
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if not 0 < size < 100 * 1024 * 1024:
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return None
    total = 0
    for name, entry in header.items():
        if name == "__metadata__" or not isinstance(entry, dict):
            continue
        if "running_" in name or name.endswith("num_batches_tracked"):
            continue  # batch-norm statistics are buffers, not parameters
        n = 1
        for d in entry.get("shape", []):
            n *= int(d)
        total += n
    return float(total) or None


def pack(
    tiers: list[TierMemory],
    gpus: int,
    gpu_mem_gib: float,
    overhead_gib: float = 0.5,
    reserve_gib: float = 0.0,
) -> Plan:
    """First-fit decreasing of GPU tiers onto ``gpus`` cards of ``gpu_mem_gib`` each.

    Pinned tiers go first to their card. A tier that fits nowhere goes to the card where it overshoots
    least, so the table shows the over-commitment; the plan then does not fit.
    """
    if gpus < 0:
        raise ValueError("gpus must be >= 0")
    capacity = gpu_mem_gib - reserve_gib
    loads = [GpuLoad(index=i, capacity_gib=capacity, overhead_gib=overhead_gib) for i in range(gpus)]
    plan = Plan(gpus=loads, tiers=tiers, gpu_mem_gib=gpu_mem_gib)
    on_gpu = [t for t in tiers if t.device == "gpu"]
    if on_gpu and gpus == 0:
        plan.problems.append(f"{len(on_gpu)} tier(s) need a GPU but --gpus is 0")
        return plan

    def put(t: TierMemory, g: GpuLoad) -> None:
        t.gpu = g.index
        g.tiers.append(t.name)
        g.tiers_gib += t.total_gib

    def room(t: TierMemory, g: GpuLoad) -> float:
        after = g.tiers_gib + t.total_gib + overhead_gib
        return g.capacity_gib - after

    for t in [t for t in on_gpu if t.pinned_gpu is not None]:
        if t.pinned_gpu is None or not 0 <= t.pinned_gpu < gpus:
            plan.problems.append(
                f"tier {t.name!r} is pinned to GPU {t.pinned_gpu} but only {gpus} GPU(s) exist"
            )
            continue
        put(t, loads[t.pinned_gpu])
    for t in sorted((t for t in on_gpu if t.pinned_gpu is None), key=lambda t: -t.total_gib):
        target = next((g for g in loads if round(room(t, g) * 1024) >= 0), None)
        if target is None:
            target = max(loads, key=lambda g: room(t, g))
        put(t, target)
    for g in loads:
        if not g.fits:
            plan.problems.append(
                f"GPU {g.index} would hold {g.used_gib:.1f} GiB of {g.capacity_gib:.1f} GiB "
                f"({', '.join(g.tiers)}): over by {g.used_gib - g.capacity_gib:.1f} GiB"
            )
    return plan


def _detect_gpus() -> tuple[int, float] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    n = torch.cuda.device_count()
    total = min(torch.cuda.get_device_properties(i).total_memory for i in range(n)) / GIB
    return n, total


def make_plan(
    settings: Settings, gpus: int | None = None, gpu_mem_gib: float | None = None, device: str | None = None
) -> Plan:
    """Plan the configured cascade. GPU count and size: arguments, else ``settings.plan``, else the
    cards torch sees, else one 80 GiB card. ``device`` (default ``settings.device``) is where tiers that
    name no device of their own run."""
    cfg = settings.plan
    detected = None
    if (gpus is None and cfg.gpus is None) or (gpu_mem_gib is None and cfg.gpu_mem_gb is None):
        detected = _detect_gpus()
    n = gpus if gpus is not None else cfg.gpus if cfg.gpus is not None else detected[0] if detected else 1
    mem = (
        gpu_mem_gib
        if gpu_mem_gib is not None
        else cfg.gpu_mem_gb
        if cfg.gpu_mem_gb is not None
        else detected[1]
        if detected
        else 80.0
    )
    default_device = _default_device(device or settings.device)
    batch = settings.batcher.max_batch
    copies = _copies(settings)
    tiers = [
        _replicate(tier_memory(t, batch, default_device, mem), copies) for t in settings.cascade.tiers if t.enabled
    ]
    return pack(tiers, n, mem, overhead_gib=cfg.cuda_context_gb, reserve_gib=cfg.reserve_gb)


def _default_device(device: str) -> str:
    d = str(device or "auto").lower()
    if d == "auto":  # the device the miner will resolve to
        gpus = _detect_gpus()
        return "cuda" if gpus else "cpu"
    return "cuda" if d.startswith("cuda") else "cpu"


def _copies(settings: Settings) -> int:
    """Model copies per tier: each miner worker process (``server.workers``) loads its own."""
    return max(1, int(getattr(settings.server, "workers", 1) or 1))


def _replicate(mem: TierMemory, copies: int) -> TierMemory:
    if copies > 1 and mem.device == "gpu":
        mem.weights_gib *= copies
        mem.activations_gib *= copies
        mem.kv_gib *= copies
        mem.copies = copies
    return mem


def plan_loaded(
    settings: Settings, predictor: Any, gpus: int | None = None, gpu_mem_gib: float | None = None
) -> Plan:
    """Plan what really runs: the tiers the cascade built (disabled and skipped ones book nothing), each
    at the device, dtype and parameter count read from its loaded modules; activations and KV cache come
    from the configured estimates. Worker processes (``server.workers``) each hold a copy."""
    cfg = settings.plan
    base = make_plan(settings, gpus=gpus, gpu_mem_gib=gpu_mem_gib)
    n, mem = len(base.gpus), base.gpu_mem_gib
    estimates = {t.name: t for t in base.tiers}
    copies = _copies(settings)
    out: list[TierMemory] = []
    built = list(getattr(predictor, "tiers", None) or [predictor])
    for tier in built:
        name = str(getattr(tier, "name", type(tier).__name__))
        est = estimates.get(name)
        fp = tier_footprint(tier)
        if est is None:
            est = TierMemory(name, type(tier).__name__, "cpu", "fp32", 0.0, settings.batcher.max_batch, 0.0, 0.0, 0.0)
        if est.copies > 1:  # undo make_plan's replication: this tier is re-booked from what it holds
            est.weights_gib /= est.copies
            est.activations_gib /= est.copies
            est.kv_gib /= est.copies
            est.copies = 1
        if fp is not None:
            dev = str(fp["device"])
            on_gpu = dev.startswith("cuda")
            est.device = "gpu" if on_gpu else "cpu"
            est.dtype = str(fp["dtype"])
            est.params = float(fp["params"])
            est.weights_gib = float(fp["bytes"]) / GIB
            est.pinned_gpu = int(dev.split(":", 1)[1]) if on_gpu and ":" in dev else (0 if on_gpu else None)
            if not on_gpu:
                est.activations_gib = est.kv_gib = 0.0
        est.gpu = None
        est.measured = fp is not None
        out.append(_replicate(est, copies))
    return pack(out, n, mem, overhead_gib=cfg.cuda_context_gb, reserve_gib=cfg.reserve_gb)


def check_plan(settings: Settings, predictor: Any = None) -> Plan:
    """Start-up guard: raise :class:`PlanError` when the tiers over-commit a GPU. Before the models load
    (``predictor`` None) the configured estimates are checked; after (``predictor``: the built cascade)
    what the loaded tiers hold.

    Nothing to check on a CPU-only configuration; ``plan.enforce: false`` only logs the problem.
    """
    from loguru import logger

    from roadminer.core.metrics import GPU_CAPACITY, GPU_PLANNED

    plan = make_plan(settings) if predictor is None else plan_loaded(settings, predictor)
    if not any(t.device == "gpu" for t in plan.tiers):
        return plan
    for g in plan.gpus:
        GPU_PLANNED.labels(gpu=str(g.index)).set(g.used_gib * GIB)
        GPU_CAPACITY.labels(gpu=str(g.index)).set(g.capacity_gib * GIB)
    if plan.fits:
        for g in plan.gpus:
            if g.tiers:
                logger.info(
                    "GPU {}: {:.1f}/{:.1f} GiB ({})", g.index, g.used_gib, g.capacity_gib, ", ".join(g.tiers)
                )
        return plan
    message = "GPU memory plan does not fit: " + "; ".join(plan.problems)
    if settings.plan.enforce:
        raise PlanError(message + " (see `roadminer plan`)", plan)
    logger.warning("{} (plan.enforce is off: starting anyway)", message)
    return plan
