"""Typed options of each tier kind: what ``cascade.tiers[].options`` may hold.

One pydantic model per kind, ``extra="forbid"``: an unknown key (``devcie``) stops start-up with an error
that names it, where a catch-all ``**kwargs`` used to swallow it. The models hold the defaults the tiers
are built with; ``models.base.build_tier`` validates the options and passes them to the tier's
constructor, which takes no catch-all keyword arguments.

Some keys are hints for the GPU memory planner only (``roadminer plan``, ``deploy/planner.py``): the
planner reads them, the tier never sees them (``PLAN_HINTS``). A per-tier ``device`` of ``None`` means
"the top-level ``device`` setting"; the tier is then built without one and placement decides.

This module imports pydantic only: the configuration validates tier options without loading torch.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The VLM prompt (both VLM kinds): option defaults, so they live with the options.
DEFAULT_INSTRUCTIONS = (
    "You inspect street-level photos for a road-maintenance survey. Road work means active or set-up "
    "construction or maintenance on or beside the road: traffic cones, barriers, work-zone signs, "
    "construction vehicles or workers. Answer with one word: Yes or No."
)
DEFAULT_QUESTION = "Is there road work in this image? Answer Yes or No."

# Keys the GPU memory planner reads and the tiers do not take (see deploy/planner.py ``tier_memory``).
PLAN_HINTS = frozenset({
    "params", "weights_gb", "activation_mb", "activation_gb", "kv_gb", "gpu",
    "kv_layers", "kv_heads", "head_dim", "kv_tokens", "kv_dtype", "max_num_seqs", "max_model_len",
    "gpu_memory_utilization",
})


class TierOptions(BaseModel):
    """Options every kind accepts: the planner's memory hints (never passed to the tier)."""

    model_config = ConfigDict(extra="forbid")

    # Planner: parameter count ("86.6M", 7e9) or weights in GiB, activations per image (MiB) or in all
    # (GiB), a fixed KV share (GiB), a GPU index to pin the tier to.
    params: float | str | None = None
    weights_gb: float | None = None
    activation_mb: float | None = None
    activation_gb: float | None = None
    kv_gb: float | None = None
    gpu: int | None = None

    # Options that are hints only on this kind (the planner reads them; the tier does not take them).
    plan_only: ClassVar[frozenset[str]] = frozenset()

    def tier_kwargs(self) -> dict[str, Any]:
        """Constructor keyword arguments: every option but the planner's hints; a ``device`` of ``None``
        is left out (the tier's own default, or the placement's choice)."""
        skip = PLAN_HINTS | self.plan_only
        out = {k: v for k, v in self.model_dump().items() if k not in skip}
        if "device" in out and out["device"] is None:
            del out["device"]
        return out


class VlmPlanHints(TierOptions):
    """KV-cache arithmetic for the planner (a VLM's memory is mostly its KV cache)."""

    kv_layers: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    kv_tokens: int | None = None
    kv_dtype: str | None = None
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)


class Exemplar(BaseModel):
    """One few-shot example of a VLM prompt: an image file (or an RGB array when built from code)."""

    model_config = ConfigDict(extra="forbid")

    image: Any
    answer: str

    @field_validator("answer")
    @classmethod
    def _yes_or_no(cls, v: str) -> str:
        answer = v.strip().capitalize()
        if answer not in ("Yes", "No"):
            raise ValueError(f"an exemplar's answer must be Yes or No, got {v!r}")
        return answer


class ClassifierOptions(TierOptions):
    """``kind: classifier`` (models/classifier.py): a saved roadminer image classifier."""

    weights: str | None = None  # safetensors file; a bare name is looked up in assets/models; None = shipped Lite0
    device: str | None = None  # None: the top-level device
    batch_size: int = Field(default=64, ge=1)
    threads: int | None = Field(default=None, ge=1)  # torch CPU threads (process-wide)
    tta_flip: bool = False  # also score the mirrored image and average


class ColourOptions(TierOptions):
    """``kind: colour`` (models/colour.py): colour-cue logistic regression, CPU."""

    coefs_path: str | None = None  # JSON coefficients; None = the shipped colour_cue.json


class YoloOptions(TierOptions):
    """``kind: yolo`` (models/detector.py): the cone/barrier/sign detector and its count head."""

    weights: str | None = None  # roadminer-yolo .safetensors (absolute, or shipped in assets/models); no .pt
    sha256: str | None = None  # expected digest of an operator's weights (shipped files are pinned in code)
    imgsz: int | None = Field(default=None, ge=32)
    conf: float = Field(default=0.05, ge=0, le=1)
    iou: float = Field(default=0.5, ge=0, le=1)
    max_det: int = Field(default=50, ge=1)
    device: str | None = None
    batch_size: int = Field(default=32, ge=1)
    head: dict[str, Any] | None = None  # logistic head over the detections (default: the weights' metadata)
    count_conf: float | None = Field(default=None, ge=0, le=1)


class OcrOptions(TierOptions):
    """``kind: ocr`` (models/ocr.py): sign text through rapidocr-onnxruntime, CPU."""

    upscale: float = Field(default=2.0, gt=0)
    p_none: float = Field(default=0.3, gt=0, lt=1)
    p_max: float = Field(default=0.95, gt=0, lt=1)
    min_similarity: float = Field(default=0.8, ge=0, le=1)
    text_score: float = Field(default=0.5, ge=0, le=1)
    phrases: dict[str, float] | None = None  # replaces the built-in work-zone phrases
    extra_phrases: dict[str, float] | None = None  # added to them
    threads: int | None = Field(default=None, ge=1)


class EngineBackboneOptions(TierOptions):
    """The network an engine tier runs: a saved classifier, else the pretrained ``arch``."""

    weights: str | None = None  # a saved roadminer classifier; None = the shipped default model
    arch: str = "efficientnet-lite0"  # only when no classifier file is found


class FastGpuOptions(EngineBackboneOptions):
    """``kind: fast_gpu`` (models/engines/fast_gpu.py): GPU JPEG decode, fp16, CUDA graphs."""

    device: str | None = None  # None: CUDA when available, else CPU
    precision: Literal["fp16", "bf16", "fp32"] = "fp16"
    max_batch: int = Field(default=256, ge=1)
    decode: Literal["auto", "gpu", "cpu"] = "auto"
    decode_threads: int = Field(default=0, ge=0)  # 0: one per core
    cuda_graphs: bool = True
    compile: bool = False
    channels_last: bool = True


class OnnxCpuOptions(EngineBackboneOptions):
    """``kind: onnx_cpu`` (models/engines/onnx_cpu.py): ONNX Runtime on the CPU, fp32 or int8."""

    int8: bool = False
    threads: int = Field(default=0, ge=0)  # 0: one per core
    max_batch: int = Field(default=64, ge=1)
    decode_threads: int = Field(default=0, ge=0)
    cache_dir: str | None = None  # exported models (default ~/.cache/roadminer/onnx)


class VllmOptions(VlmPlanHints):
    """``kind: vlm_vllm`` (models/vlm/vllm.py): a VLM judge behind an OpenAI-compatible vLLM server."""

    base_url: str = "http://127.0.0.1:8000"  # with or without a trailing /v1
    model: str = "Qwen/Qwen3-VL-4B-Instruct"  # the server's model name (vllm --served-model-name)
    api_key: str | None = None
    timeout_s: float = Field(default=3.0, gt=0)
    instructions: str = DEFAULT_INSTRUCTIONS
    question: str = DEFAULT_QUESTION
    exemplars: list[Exemplar] = Field(default_factory=list)
    top_logprobs: int = Field(default=10, ge=1)
    max_pixels: int | None = Field(default=None, ge=1)
    max_concurrency: int = Field(default=64, ge=1)
    # Planner only: where the server's GPU is ("remote": another machine, no memory here; None: the
    # top-level device) and its weights' dtype.
    device: str | None = None
    dtype: str | None = None

    plan_only: ClassVar[frozenset[str]] = frozenset({"device", "dtype"})


class VlmHfOptions(VlmPlanHints):
    """``kind: vlm_hf`` (models/vlm/hf.py): in-process transformers VLM with a shared prefix-KV cache."""

    model: str = "Qwen/Qwen2-VL-2B-Instruct"  # hub id or local folder
    revision: str | None = None
    device: str | None = None
    dtype: Literal["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"] = "auto"
    instructions: str = DEFAULT_INSTRUCTIONS
    question: str = DEFAULT_QUESTION
    exemplars: list[Exemplar] = Field(default_factory=list)
    image_size: int = Field(default=224, ge=28)
    min_pixels: int | None = Field(default=None, ge=1)
    max_pixels: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=8, ge=1)
    prefix_cache: bool = True
    redis_url: str | None = None  # share the prefix KV through Redis
    key_prefix: str = "roadminer:"
    lru_size: int = Field(default=4, ge=1)
    kv_ttl_s: float | None = Field(default=None, gt=0)
    attn_implementation: str | None = "sdpa"


TIER_OPTIONS: dict[str, type[TierOptions]] = {
    "classifier": ClassifierOptions,
    "colour": ColourOptions,
    "yolo": YoloOptions,
    "ocr": OcrOptions,
    "fast_gpu": FastGpuOptions,
    "onnx_cpu": OnnxCpuOptions,
    "vlm_vllm": VllmOptions,
    "vlm_hf": VlmHfOptions,
}


def register_tier_options(kind: str, model: type[TierOptions]) -> None:
    """Declare the options of a tier kind defined outside this package (see ``register_tier``)."""
    TIER_OPTIONS[kind] = model


def options_model(kind: str) -> type[TierOptions]:
    try:
        return TIER_OPTIONS[kind]
    except KeyError:
        raise ValueError(f"unknown tier kind {kind!r}; known: {', '.join(sorted(TIER_OPTIONS))}") from None


def validate_tier_options(kind: str, options: dict[str, Any] | None) -> TierOptions:
    """The typed options of one tier; raises pydantic's ``ValidationError`` naming any bad key."""
    return options_model(kind).model_validate(options or {})
