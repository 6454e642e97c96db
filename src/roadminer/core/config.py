"""One typed configuration tree.

Precedence (highest first), in every case: CLI overrides > ``ROADMINER_*`` environment (``__`` nests, e.g.
``ROADMINER_SERVER__PORT=8092``) > YAML file (``--config``) > defaults below. pydantic-settings merges
the layers (``core.config_layers``); every section refuses unknown keys, and each tier kind's options are
typed (``core.tier_options``). ``roadminer config show`` prints the effective values and their layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from roadminer.core.config_layers import ConfigError, SettingsLayers, allowed_hint
from roadminer.core.tier_options import PLAN_HINTS, TIER_OPTIONS, options_model

__all__ = ["ConfigError", "Settings", "load_settings", "resolve_settings"]

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/roadminer (this file is core/config.py)
ASSETS_DIR = PACKAGE_DIR / "assets"


class Section(BaseModel):
    """A settings section: unknown keys are an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid")


class WalletConfig(Section):
    path: str = "~/.bittensor/wallets"
    name: str = "roadminer"
    hotkey: str = "default"
    create_if_missing: bool = True


class ServerConfig(Section):
    host: str = "0.0.0.0"
    port: int = 8091
    # Extra (port, wallet hotkey) pairs served by the same process, sharing one batcher and model.
    extra_hotkeys: list[ExtraHotkey] = Field(default_factory=list)
    max_body_bytes: int = 2 * 1024 * 1024
    request_deadline_s: float = 8.0
    btauth_route: str = "/v1/roadwork"
    # Public IP/port announced on chain (ServeAxon); None means use host/port.
    external_ip: str | None = None
    external_port: int | None = None
    # Miner processes sharing the port(s) through SO_REUSEPORT, each with its own model; more than one
    # needs state.backend: redis so that every worker sees every nonce (roadminer.miner.workers).
    workers: int = Field(default=1, ge=1, le=64)


class ExtraHotkey(Section):
    port: int
    hotkey: str
    name: str | None = None  # wallet name; defaults to wallet.name
    external_port: int | None = None  # port announced on chain; None means port


class ChainConfig(Section):
    network: Literal["local", "finney", "test"] | str = "local"
    netuid: int = 72
    local_config: str = "configs/local_chain.yaml"
    sync_interval_s: float = 120.0
    # The miner records its own incentive/trust/consensus/emission into history this often (0 = off).
    metrics_interval_s: float = 300.0
    # finney/test: ServeAxon for every served hotkey at start, and again when the chain shows another
    # address (checked this often); never twice within announce_min_gap_s (the chain's serving rate limit).
    announce: bool = True
    announce_check_s: float = 60.0
    announce_min_gap_s: float = 600.0


class GuardConfig(Section):
    allow_unregistered: bool = False
    require_validator_permit: bool = True
    min_stake: float = 1000.0
    rate_limit_per_minute: int = 120
    rate_limit_burst: int = 30
    max_inflight: int = 256
    # When the number of in-flight requests passes this share of max_inflight, low-stake callers get 503.
    priority_threshold: float = 0.75
    nonce_allowed_delta_s: float = 4.0
    # SN72 nonce window of a first-seen endpoint: nonce_allowed_delta_s + the caller's timeout header,
    # which is unsigned and therefore clamped to this (validators send 9-12 s).
    sn72_max_timeout_s: float = Field(default=12.0, ge=0.0)
    # How long an SN72 endpoint's last nonce is kept; must cover the window above (checked here and at start).
    nonce_endpoint_ttl_s: float = 3600.0
    # Always served (still signature-checked) / always refused, whatever the chain says.
    whitelist_hotkeys: list[str] = Field(default_factory=list)
    blacklist_hotkeys: list[str] = Field(default_factory=list)
    # btauth/1 freshness window (bittensor.http_auth defaults).
    btauth_max_age_s: float = 10.0
    btauth_allowed_skew_s: float = 2.0

    @model_validator(mode="after")
    def _nonce_retention_covers_the_window(self) -> GuardConfig:
        window = self.nonce_allowed_delta_s + self.sn72_max_timeout_s
        if self.nonce_endpoint_ttl_s < window:
            raise ValueError(
                f"guards.nonce_endpoint_ttl_s ({self.nonce_endpoint_ttl_s:g} s) must be at least the SN72 nonce "
                f"window nonce_allowed_delta_s + sn72_max_timeout_s ({window:g} s): a shorter one lets a "
                "captured request be replayed after its endpoint entry expires"
            )
        return self


class ImageLimits(Section):
    max_encoded_bytes: int = 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_side: int = 8192
    formats: list[str] = Field(default_factory=lambda: ["JPEG", "PNG", "WEBP", "BMP"])
    input_size: int = 224
    # The miner shrinks decoded images with a longer side to this (bounds memory per queued request).
    max_work_side: int | None = 1024


class BatcherConfig(Section):
    max_batch: int = 64
    max_wait_ms: float = 2.0
    workers: int = 1


class StateConfig(Section):
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "roadminer:"
    result_cache_ttl_s: int = 3600
    session_history: int = 500
    redis_socket_timeout_s: float = 1.0
    reconnect_max_backoff_s: float = 30.0
    history_retention_days: float = 30.0
    # Hard-example queue: stream length cap, per-image size cap, how long images are kept.
    queue_max_entries: int = 10_000
    queue_max_image_bytes: int = 512 * 1024
    queue_image_ttl_days: float = 14.0
    # When an answer is queued (see roadminer.state.queue.HardExamplePolicy).
    queue_low_margin: float = 0.15
    queue_disagreement: float = 0.4
    queue_vlm_tiers: list[str] = Field(default_factory=lambda: ["vlm"])
    queue_low_reward: float = 0.3


class LearningConfig(Section):
    """Model registry and the mine -> train -> promote loop."""

    models_dir: str = "models"
    tier: str | None = None  # cascade tier (by name) the loop retrains; None = the first tier
    held_out: str | None = None  # image folder (roadwork/, no_roadwork/) for the promotion gate
    train_data: list[str] = Field(default_factory=list)  # base training sets the loop fine-tunes on
    work_dir: str = "runs/learn"
    # Who labels unlabelled hard examples (roadminer.lifecycle.teacher): "cascade" = every served tier on
    # every image (no early exit) plus teacher_tiers; a tier name = that served tier alone; None = nobody.
    teacher_tier: str | None = "cascade"
    # Tiers only the teacher runs (e.g. the YOLO detector, a VLM); pooled with the cascade by log-odds.
    teacher_tiers: list[TierConfig] = Field(default_factory=list)
    teacher_agreement: bool = True  # a teacher label also needs every teacher voter on the same side
    pseudo_margin: float = 0.3  # teacher labels only where |p - 0.5| >= this
    # Training weight of a label by who gave it (the sampler draws an image this much more/less often).
    provenance_weights: dict[str, float] = Field(
        default_factory=lambda: {"human": 1.0, "simulator": 1.0, "teacher": 0.5}
    )
    mcc_tolerance: float = 0.0  # candidate MCC may not drop by more than this
    brier_tolerance: float = 0.0  # nor Brier rise by more than this
    # The bonnet probe in the gate (docs/model_card.md): frames (e.g. windshield video) whose bottom strip is
    # pasted onto the held-out negatives; a candidate fails when the strip alone turns more of its answers into
    # road work than the served model's, plus bonnet_tolerance. None: no probe.
    bonnet_donors: str | None = None
    bonnet_tolerance: float = Field(0.02, ge=0.0, le=1.0)
    bonnet_height: float = Field(0.12, gt=0.0, le=0.5)
    min_queue: int = 20  # labelled hard examples needed before the loop trains
    eval_levels: list[int] = Field(default_factory=lambda: [0, 1, 2, 3])
    reload_poll_s: float = 5.0  # the miner checks the registry's current version this often


class TrainConfig(Section):
    """``roadminer train``: fine-tune an image classifier on validator-parity views."""

    arch: str = "efficientnet-lite0"  # efficientnet-lite0/1/2, timm:<id>, hf:<id>
    pretrained: bool = True
    init_checkpoint: str | None = None  # a saved roadminer classifier to fine-tune from
    epochs: int = 10
    samples_per_epoch: int | None = None  # default: the dataset size (weighted sampling with replacement)
    batch_size: int = 64
    lr: float = 6e-4
    weight_decay: float = 1e-4
    warmup_frac: float = 0.05
    label_smoothing: float = 0.05
    dropout: float | None = 0.3
    levels: list[int] = Field(default_factory=lambda: [0, 1, 2, 3])
    real_flip_share: float = 0.25  # share of level>=1 views with the validator's real flips (else no-flip bug)
    source_power: float = 0.5  # per-source sampling share ~ count**power within each label
    copy_paste_p: float = 0.0  # share of negative draws that get boxed cones/signs pasted in (label -> 1)
    calib_frac: float = 0.15  # grouped hold-out for temperature/threshold; 0 = no hold-out
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    amp: bool = True
    lora_rank: int = 0  # > 0: LoRA (peft) on timm/hf backbones instead of full fine-tuning
    use_dora: bool = False


class TierConfig(Section):
    name: str
    kind: str  # tier kind: classifier, colour, yolo, ocr, fast_gpu, onnx_cpu, vlm_vllm, vlm_hf
    enabled: bool = True
    weight: float = 1.0
    # Exit the cascade after this tier when the pooled probability is outside [1-t, t].
    exit_confidence: float | None = None
    # Typed per kind (core/tier_options.py): unknown keys are refused. Kept as the keys that were given.
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        options_model(v)  # ValueError naming the known kinds
        return v

    @field_validator("options")
    @classmethod
    def _typed_options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        kind = info.data.get("kind")
        if kind is None:  # the kind itself was refused
            return v
        model = TIER_OPTIONS[kind]
        try:
            typed = model.model_validate(v)
        except ValidationError as e:
            raise _explained_option_errors(e, kind, model) from None
        return typed.model_dump(exclude_unset=True)


def _explained_option_errors(err: ValidationError, kind: str, model: type[BaseModel]) -> ValidationError:
    """The tier-options errors with the kind's allowed keys (and a near miss) in each unknown-key message."""
    details: list[InitErrorDetails] = []
    for e in err.errors(include_url=False):
        if e["type"] == "extra_forbidden":
            options = sorted(k for k in model.model_fields if k not in PLAN_HINTS)
            hint = allowed_hint(str(e["loc"][-1]), options, f"a {kind} tier", "; plus the planner's memory hints")
            error = PydanticCustomError("unknown_tier_option", "unknown option{hint}", {"hint": hint})
            details.append(InitErrorDetails(type=error, loc=tuple(e["loc"]), input=e["input"]))
        else:  # the error as it was
            kept = InitErrorDetails(type=e["type"], loc=tuple(e["loc"]), input=e["input"])
            if "ctx" in e:
                kept["ctx"] = e["ctx"]
            details.append(kept)
    return ValidationError.from_exception_data(err.title, details)


def _default_tiers() -> list[TierConfig]:
    # The shipped classifiers (assets/models/roadwork_classifier*.safetensors, load offline): EfficientNet-Lite0
    # answers every image and lets the confident ones leave; the rest also get EfficientNet-Lite2, pooled by
    # the stacking weights of assets/models/cascade_consensus.json (which override weight/exit_confidence).
    return [
        TierConfig(name="classifier", kind="classifier", exit_confidence=0.6,
                   options={"weights": "roadwork_classifier.safetensors"}),
        TierConfig(name="classifier2", kind="classifier", exit_confidence=None,
                   options={"weights": "roadwork_classifier_lite2.safetensors"}),
    ]


class CascadeConfig(Section):
    tiers: list[TierConfig] = Field(default_factory=_default_tiers)
    # Engine of the classifier tiers: auto = fast (nvJPEG + fp16 + CUDA graphs) on CUDA, ONNX Runtime on the
    # CPU when installed, else torch (roadminer.models.placement).
    engine: Literal["auto", "torch", "onnx", "fast"] = "auto"
    # Decision threshold on the calibrated probability (validator rounds: 0.5 -> "no roadwork").
    # Identity by default: the fitted consensus (stacking) is the calibration. For Lite0 alone, stage 0 of
    # cascade_consensus.json is its calibration (temperature 1/0.377, bias 0.089; docs/model_card.md).
    threshold: float = 0.5
    temperature: float = 1.0
    bias: float = 0.0
    # VLM tiers (kinds vlm_vllm / vlm_hf) run only when this is on (``--set cascade.vlm=true`` or
    # ROADMINER_CASCADE__VLM=1); off by default so the cascade runs offline.
    vlm: bool = False
    # Stacking weights + fitted exit thresholds (``roadminer cascade-fit`` / ``cascade-stack``); missing file
    # = plain weights. Default: the consensus fitted for the default tiers (see docs/model_card.md).
    consensus_file: str | None = str(ASSETS_DIR / "models" / "cascade_consensus.json")
    fitted_exits: bool = True  # False: use the fitted weights but the thresholds configured per tier
    no_exit_on_disagreement: bool = False  # tiers on different sides of 0.5 -> go on to the next tier
    low_light_below: float | None = None  # mean luma (0-255) under which an image never exits early

    @field_validator("tiers")
    @classmethod
    def _unique_names(cls, v: list[TierConfig]) -> list[TierConfig]:
        names = [t.name for t in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"tier names must be unique (the consensus and metrics key on them): {dup}")
        return v


class SimulatorConfig(Section):
    n: int = 100
    seed: int = 0
    concurrency: int = 1
    protocol: Literal["sn72", "btauth"] = "sn72"
    reference_flip_bug: bool = False
    timeout_s: float = 9.0
    # Key the simulator signs with: a dev URI registered as a validator on the local chain.
    hotkey_uri: str = "//Alice"


class ValidatorConfig(Section):
    """The validator neuron (``roadminer validator``); the simulator runs the same code path."""

    # A dev URI (``//Alice``) instead of the wallet hotkey, for local chains only.
    hotkey_uri: str | None = None
    images: str | None = None  # DIR with roadwork/ + no_roadwork/
    parquet: str | None = None  # reference dataset layout (image bytes, label)
    sample_size: int = 10  # miners per challenge
    challenge_interval_s: float = 60.0
    timeout_s: float = 9.0
    protocol: Literal["sn72", "btauth"] = "sn72"
    reference_flip_bug: bool = False
    alpha: float = 0.05
    # Validators with at least this stake are not queried (and get score 0).
    vpermit_stake_limit: float = 1000.0
    weights_interval_blocks: int = 101
    weights_interval_s: float = 1200.0  # used when the chain has no block height (local chain)
    min_allowed_weights: int = 1  # chain hyperparameters override these where the chain has them
    max_weight_limit: float = 1.0
    state_backend: Literal["disk", "redis"] = "disk"
    state_path: str = "~/.roadminer/validator/state.json"
    state_key: str = "validator:state"
    seed: int | None = None


class PlanConfig(Section):
    """GPU memory planner (``roadminer plan``; checked by the miner at start-up)."""

    gpus: int | None = None  # None: the cards torch sees (1 when none)
    gpu_mem_gb: float | None = None  # GiB per card; None: detected, else 80
    cuda_context_gb: float = 0.5  # per GPU in use (CUDA context, allocator slack)
    reserve_gb: float = 0.0  # kept free on every card
    enforce: bool = True  # refuse to start on an over-committed GPU


class DashboardConfig(Section):
    on_miner: bool = True  # the miner also serves the dashboard at /dashboard/ (main hotkey's port)
    host: str = "127.0.0.1"
    port: int = 8095
    # Where the dashboard reads live Prometheus numbers when it runs apart from the miner.
    miner_url: str | None = None
    window_s: float = 24 * 3600.0
    refresh_s: float = 30.0
    # The labelling page answers loopback clients only, unless this token is set: then every client
    # (loopback too) must send it (?token= once, then a cookie; or the X-Roadminer-Token header).
    label_token: str | None = None


class LoggingConfig(Section):
    level: str = "INFO"
    json_logs: bool = False
    file: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ROADMINER_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    wallet: WalletConfig = Field(default_factory=WalletConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    chain: ChainConfig = Field(default_factory=ChainConfig)
    guards: GuardConfig = Field(default_factory=GuardConfig)
    images: ImageLimits = Field(default_factory=ImageLimits)
    batcher: BatcherConfig = Field(default_factory=BatcherConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    simulator: SimulatorConfig = Field(default_factory=SimulatorConfig)
    validator: ValidatorConfig = Field(default_factory=ValidatorConfig)
    learning: LearningConfig = Field(default_factory=LearningConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    plan: PlanConfig = Field(default_factory=PlanConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    device: str = "auto"  # auto | cpu | cuda | cuda:N: where every tier runs (roadminer.models.placement)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # ``Settings(**values)``: the values beat the environment. ``load_settings`` passes its own
        # sources (command line > environment > YAML file > defaults, see core/config_layers.py).
        return (init_settings, env_settings)


ServerConfig.model_rebuild()
LearningConfig.model_rebuild()


def dotted_to_nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"server.port": 1}`` -> ``{"server": {"port": 1}}``; ``None`` values (options not given on the
    command line) are dropped. A key that is both a value and a parent (``a=1``, ``a.b=2``) is refused."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        parts = [p.strip() for p in key.split(".")]
        if not all(parts):
            raise ConfigError(f"command line: bad override key {key!r}")
        node = nested
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"command line: {key!r} sets a key inside {p!r}, which is given a value too")
            node = child
        if isinstance(node.get(parts[-1]), dict) and not isinstance(value, dict):
            raise ConfigError(f"command line: {key!r} is given a value and keys inside it")
        node[parts[-1]] = value
    return nested


def resolve_settings(
    config_file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> tuple[Settings, SettingsLayers]:
    """The settings and the layers they came from (for ``roadminer config show``)."""
    layers = SettingsLayers(Settings, config_file, dotted_to_nested(overrides or {}))
    problems = [f"  environment {var}: unknown section {var.split('__')[0][len('ROADMINER_'):].lower()!r} "
                f"(sections: {', '.join(Settings.model_fields)})" for var in layers.unknown_env_sections()]
    try:
        settings = Settings(_build_sources=(layers.sources, {}))
    except ValidationError as e:
        raise ConfigError(layers.explain(e, problems)) from None
    if problems:
        raise ConfigError(layers.explain(None, problems))
    return settings, layers


def load_settings(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from defaults, the YAML file, ``ROADMINER_*`` variables and dotted command-line overrides
    (``{"server.port": 8092}``), each layer over the one before. Raises ``ConfigError`` (a ``ValueError``)
    naming every bad key and the file, variable or command line that holds it; ``FileNotFoundError`` for
    a missing file."""
    return resolve_settings(config_file, overrides)[0]

