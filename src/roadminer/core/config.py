"""One typed configuration tree.

Precedence (highest first): CLI overrides > ``ROADMINER_*`` environment (``__`` nests, e.g.
``ROADMINER_SERVER__PORT=8092``) > YAML file (``--config``) > defaults below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/roadminer (this file is core/config.py)
ASSETS_DIR = PACKAGE_DIR / "assets"


class WalletConfig(BaseModel):
    path: str = "~/.bittensor/wallets"
    name: str = "roadminer"
    hotkey: str = "default"
    create_if_missing: bool = True


class ServerConfig(BaseModel):
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


class ExtraHotkey(BaseModel):
    port: int
    hotkey: str
    name: str | None = None  # wallet name; defaults to wallet.name


class ChainConfig(BaseModel):
    network: Literal["local", "finney", "test"] | str = "local"
    netuid: int = 72
    local_config: str = "configs/local_chain.yaml"
    sync_interval_s: float = 120.0
    # The miner records its own incentive/trust/consensus/emission into history this often (0 = off).
    metrics_interval_s: float = 300.0


class GuardConfig(BaseModel):
    allow_unregistered: bool = False
    require_validator_permit: bool = True
    min_stake: float = 1000.0
    rate_limit_per_minute: int = 120
    rate_limit_burst: int = 30
    max_inflight: int = 256
    # When the number of in-flight requests passes this share of max_inflight, low-stake callers get 503.
    priority_threshold: float = 0.75
    nonce_allowed_delta_s: float = 4.0
    # Always served (still signature-checked) / always refused, whatever the chain says.
    whitelist_hotkeys: list[str] = Field(default_factory=list)
    blacklist_hotkeys: list[str] = Field(default_factory=list)
    # btauth/1 freshness window (bittensor.http_auth defaults).
    btauth_max_age_s: float = 10.0
    btauth_allowed_skew_s: float = 2.0


class ImageLimits(BaseModel):
    max_encoded_bytes: int = 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_side: int = 8192
    formats: list[str] = Field(default_factory=lambda: ["JPEG", "PNG", "WEBP", "BMP"])
    input_size: int = 224
    # The miner shrinks decoded images with a longer side to this (bounds memory per queued request).
    max_work_side: int | None = 1024


class BatcherConfig(BaseModel):
    max_batch: int = 64
    max_wait_ms: float = 2.0
    workers: int = 1


class StateConfig(BaseModel):
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


class LearningConfig(BaseModel):
    """Model registry and the mine -> train -> promote loop."""

    models_dir: str = "models"
    tier: str | None = None  # cascade tier (by name) the loop retrains; None = the first tier
    held_out: str | None = None  # image folder (roadwork/, no_roadwork/) for the promotion gate
    train_data: list[str] = Field(default_factory=list)  # base training sets the loop fine-tunes on
    work_dir: str = "runs/learn"
    teacher_tier: str | None = None  # tier name used for pseudo-labels/distillation; None = full cascade
    pseudo_margin: float = 0.3
    mcc_tolerance: float = 0.0  # candidate MCC may not drop by more than this
    brier_tolerance: float = 0.0  # nor Brier rise by more than this
    min_queue: int = 20  # labelled hard examples needed before the loop trains
    eval_levels: list[int] = Field(default_factory=lambda: [0, 1, 2, 3])
    reload_poll_s: float = 5.0  # the miner checks the registry's current version this often


class TrainConfig(BaseModel):
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


class TierConfig(BaseModel):
    name: str
    kind: str  # registry key, e.g. "colour", "classifier", "yolo", "vlm_vllm", "vlm_hf"
    enabled: bool = True
    weight: float = 1.0
    # Exit the cascade after this tier when the pooled probability is outside [1-t, t].
    exit_confidence: float | None = None
    options: dict[str, Any] = Field(default_factory=dict)


def _default_tiers() -> list[TierConfig]:
    # The shipped classifiers (assets/models/roadwork_classifier*.safetensors, load offline): EfficientNet-Lite0
    # answers every image and lets the confident ones leave; the rest also get EfficientNet-Lite2, pooled by
    # the stacking weights of assets/models/cascade_consensus.json (which override weight/exit_confidence).
    return [
        TierConfig(name="classifier", kind="classifier", exit_confidence=0.865,
                   options={"weights": "roadwork_classifier.safetensors"}),
        TierConfig(name="classifier2", kind="classifier", exit_confidence=None,
                   options={"weights": "roadwork_classifier_lite2.safetensors"}),
    ]


class CascadeConfig(BaseModel):
    tiers: list[TierConfig] = Field(default_factory=_default_tiers)
    # Decision threshold on the calibrated probability (validator rounds: 0.5 -> "no roadwork").
    # Identity by default: the fitted consensus (stacking) is the calibration. For Lite0 alone use its
    # out-of-fold calibration from roadwork_classifier.card.json (threshold 0.66, temperature 1.2041, bias 0.1035).
    threshold: float = 0.5
    temperature: float = 1.0
    bias: float = 0.0
    # VLM tiers (kinds vlm_vllm / vlm_hf) run only when this is on (``--cascade.vlm true`` or
    # ROADMINER_CASCADE__VLM=1); off by default so the cascade runs offline.
    vlm: bool = False
    # Stacking weights + fitted exit thresholds (``roadminer cascade-fit`` / ``cascade-stack``); missing file
    # = plain weights. Default: the consensus fitted for the default tiers (see docs/model_card.md).
    consensus_file: str | None = str(ASSETS_DIR / "models" / "cascade_consensus.json")
    fitted_exits: bool = True  # False: use the fitted weights but the thresholds configured per tier
    no_exit_on_disagreement: bool = False  # tiers on different sides of 0.5 -> go on to the next tier
    low_light_below: float | None = None  # mean luma (0-255) under which an image never exits early


class SimulatorConfig(BaseModel):
    n: int = 100
    seed: int = 0
    concurrency: int = 1
    protocol: Literal["sn72", "btauth"] = "sn72"
    reference_flip_bug: bool = False
    timeout_s: float = 9.0
    # Key the simulator signs with: a dev URI registered as a validator on the local chain.
    hotkey_uri: str = "//Alice"


class ValidatorConfig(BaseModel):
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


class PlanConfig(BaseModel):
    """GPU memory planner (``roadminer plan``; checked by the miner at start-up)."""

    gpus: int | None = None  # None: the cards torch sees (1 when none)
    gpu_mem_gb: float | None = None  # GiB per card; None: detected, else 80
    cuda_context_gb: float = 0.5  # per GPU in use (CUDA context, allocator slack)
    reserve_gb: float = 0.0  # kept free on every card
    enforce: bool = True  # refuse to start on an over-committed GPU


class DashboardConfig(BaseModel):
    on_miner: bool = True  # the miner also serves the dashboard at /dashboard/ (main hotkey's port)
    host: str = "127.0.0.1"
    port: int = 8095
    # Where the dashboard reads live Prometheus numbers when it runs apart from the miner.
    miner_url: str | None = None
    window_s: float = 24 * 3600.0
    refresh_s: float = 30.0


class LoggingConfig(BaseModel):
    level: str = "INFO"
    json_logs: bool = False
    file: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ROADMINER_", env_nested_delimiter="__", extra="ignore", validate_default=True
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
    device: str = "cpu"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init (CLI overrides merged over YAML by load_settings) beats env.
        return (init_settings, env_settings)


ServerConfig.model_rebuild()


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def dotted_to_nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"server.port": 1}`` -> ``{"server": {"port": 1}}``; ``None`` values are dropped."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return nested


def load_settings(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build settings: YAML file, then ``ROADMINER_*`` env, then dotted CLI overrides on top."""
    data: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping at the top level")
        data = loaded
    env_only = Settings()  # env + defaults
    env_set = env_only.model_dump(exclude_defaults=True)
    merged = _deep_merge(_deep_merge(data, env_set), dotted_to_nested(overrides or {}))
    return Settings(**merged)
