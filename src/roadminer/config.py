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

PACKAGE_DIR = Path(__file__).resolve().parent
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


class ImageLimits(BaseModel):
    max_encoded_bytes: int = 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_side: int = 8192
    formats: list[str] = Field(default_factory=lambda: ["JPEG", "PNG", "WEBP", "BMP"])
    input_size: int = 224


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


class TierConfig(BaseModel):
    name: str
    kind: str  # registry key, e.g. "colour", "classifier", "yolo", "vlm_vllm", "vlm_hf"
    enabled: bool = True
    weight: float = 1.0
    # Exit the cascade after this tier when the pooled probability is outside [1-t, t].
    exit_confidence: float | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class CascadeConfig(BaseModel):
    tiers: list[TierConfig] = Field(
        default_factory=lambda: [TierConfig(name="colour", kind="colour", exit_confidence=None)]
    )
    # Decision threshold on the calibrated probability (validator rounds: 0.5 -> "no roadwork").
    threshold: float = 0.5
    temperature: float = 1.0
    bias: float = 0.0


class SimulatorConfig(BaseModel):
    n: int = 100
    seed: int = 0
    concurrency: int = 1
    protocol: Literal["sn72", "btauth"] = "sn72"
    reference_flip_bug: bool = False
    timeout_s: float = 9.0


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
    simulator: SimulatorConfig = Field(default_factory=SimulatorConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
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
