"""Training recipes as files: ``configs/train/*.yaml`` holds everything that makes a shipped classifier (the
downsized data copy, the view bank, the fit), so that one command re-makes it (``roadminer train-recipe``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecipeData(_Strict):
    """How the training copy of the dataset is made from the full one (``export_downsized``)."""

    short_side: int = 224
    quality: int = 60
    format: Literal["JPEG", "WEBP"] = "WEBP"
    max_per_source: dict[str, int] = Field(default_factory=lambda: {"kagan": 500})
    every_nth: dict[str, int] = Field(default_factory=lambda: {"camvid": 2})
    seed: int = 0


class RecipeBank(_Strict):
    """Pre-rendered validator views: ``K_i = clip(round(views_scale * w_i * N), kmin, kmax)`` views of image
    ``i`` (``w_i`` its sampling weight), each a pure function of (seed, image index, view index)."""

    seed: int = 7
    views_scale: float = 16.0
    kmin: int = 6
    kmax: int = 48
    level_p: list[float] = Field(default_factory=lambda: [0.2, 0.25, 0.25, 0.3])
    # The level mix of the negatives' plain views when set (e.g. more level 3: hard negatives, since level-3
    # distortions mostly make negatives look like road work; docs/model_card.md). None: ``level_p`` for all.
    level_p_negative: list[float] | None = None
    paste_frac: float = 0.4  # copy-paste views rendered per negative image, as a share of its K
    # Strip views: a negative with the bottom strip (bonnet, dashboard edge) of a positive frame from one of
    # these sources pasted in, still a negative: the shipped models had learnt "windshield bonnet -> road
    # work" (docs/model_card.md, bonnet probe). strip_frac: strip views per negative as a share of its K.
    strip_sources: list[str] = Field(default_factory=list)
    strip_frac: float = 0.0
    strip_height: tuple[float, float] = (0.05, 0.15)  # strip height range, share of the image height
    # Largest share of work-zone orange pixels in a usable strip (a cone at the bumper makes a road-work strip,
    # not a bonnet): a third of the wzcity frames' bottom 15% show some; None = any strip (the shipped recipes).
    strip_max_orange: float | None = Field(None, ge=0.0, le=1.0)
    # The same strips on positives of the other sources (web photos of cones, German car camera), still positive:
    # a bonnet then comes with both labels and carries no evidence either way, where strips on negatives alone
    # make it evidence against road work (and cost windshield positives recall). Views per positive, share of K.
    strip_pos_frac: float = Field(0.0, ge=0.0)
    real_flip_share: float = 0.25

    @field_validator("level_p", "level_p_negative")
    @classmethod
    def _levels(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (len(v) != 4 or abs(sum(v) - 1.0) > 1e-6 or min(v) < 0):
            raise ValueError("a level mix needs four non-negative shares (levels 0-3) that sum to 1")
        return v

    @field_validator("strip_height")
    @classmethod
    def _strip(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 0.5:
            raise ValueError("strip_height needs 0 < low <= high <= 0.5 (shares of the image height)")
        return v


class RecipeFit(_Strict):
    arch: str = "efficientnet-lite0"
    seed: int = 0
    draws: int = 24000
    batch: int = 64
    lr: float = 6e-4
    weight_decay: float = 1e-4
    warmup_frac: float = 0.05
    label_smoothing: float = 0.05
    dropout: float = 0.3
    source_power: float = 0.5
    source_mult: dict[str, float] = Field(default_factory=dict)
    paste_p: float = 0.3  # share of a negative image's draws that are copy-paste positives
    strip_p: float = 0.0  # share of a negative image's draws that are strip views (bank.strip_sources)
    strip_pos_p: float = Field(0.0, ge=0.0, lt=1.0)  # share of a positive's draws that are strip views (strip_pos_frac)
    consistency: float = 0.0  # weight of a flip-consistency loss (0 = off)
    # The model's input side: the bank's 224 px views are upscaled to it in training and challenges in serving
    # (None = the architecture's own size: 224 for Lite0, 260 for Lite2).
    input_size: int | None = Field(None, ge=64, le=640)
    # MixStyle (training/mixstyle.py): per batch and stage, the probability that early feature statistics are mixed
    # between images (0 = off), and the Beta(alpha, alpha) of the mix.
    mixstyle: float = Field(0.0, ge=0.0, le=1.0)
    mixstyle_alpha: float = Field(0.1, gt=0.0)
    # Weight averaging (SWA / SWAD-style): the fitted model is the uniform mean of the weights (and BatchNorm
    # statistics) after every step from this fraction of the steps on; 1.0 = off, the last step's weights.
    average_from: float = Field(1.0, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _shares(self) -> RecipeFit:
        if min(self.paste_p, self.strip_p) < 0 or self.paste_p + self.strip_p >= 1:
            raise ValueError("paste_p and strip_p are shares of a negative's draws: each >= 0, together < 1")
        return self


class TrainRecipe(_Strict):
    name: str
    description: str = ""
    data: RecipeData = Field(default_factory=RecipeData)
    bank: RecipeBank = Field(default_factory=RecipeBank)
    fit: RecipeFit = Field(default_factory=RecipeFit)
    eval_seed: int = 1234
    workers: int = 0  # 0 = one per CPU core

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainRecipe:
        rec = load_recipe(path)
        if not isinstance(rec, cls):
            raise ValueError(f"{path}: a detector recipe, not a classifier recipe")
        return rec


class RecipeDetector(_Strict):
    """The YOLO detector tier: dataset build (``build_yolo_dataset``) and ultralytics training."""

    model: str = "yolov5n.yaml"  # ultralytics architecture yaml (never a .pt)
    init: str | None = None  # safetensors for layers 0..init_max_layer (e.g. the COCO YOLOv5n); --init overrides
    init_max_layer: int = 23
    dataset_size: int = 224  # square crop size of the written images (what validators send)
    imgsz: int = 320  # training and inference size (multiple of 32)
    epochs: int = 30
    time_min: float | None = None  # per training; ultralytics then fits the epochs to it (machine-dependent)
    batch: int = 64
    seed: int = 0
    max_negatives_per_source: int | None = 200
    distorted_copies: int = 1
    conf: float = 0.05  # detections from this confidence enter the features
    train_args: dict[str, float | int | str | bool] = Field(default_factory=dict)  # more ultralytics arguments

    @field_validator("imgsz")
    @classmethod
    def _mult32(cls, v: int) -> int:
        if v % 32:
            raise ValueError("imgsz must be a multiple of 32")
        return v

    @field_validator("model")
    @classmethod
    def _yaml(cls, v: str) -> str:
        if not v.endswith((".yaml", ".yml")):
            raise ValueError("model must be an ultralytics architecture yaml (no .pt: those are pickles)")
        return v


class DetectorRecipe(_Strict):
    """A detector recipe file: the same data copy as the classifiers, leave-one-source-out runs scored on the
    classifiers' evaluation views (``eval_seed``), then the shipped detector and its head."""

    name: str
    description: str = ""
    data: RecipeData = Field(default_factory=RecipeData)
    detector: RecipeDetector = Field(default_factory=RecipeDetector)
    eval_seed: int = 1234
    workers: int = 0  # render processes; 0 = one per CPU core
    parallel: int = 4  # detector trainings at once (each gets cores / parallel data-loader workers)


def load_recipe(path: str | Path) -> TrainRecipe | DetectorRecipe:
    """A recipe file: a ``detector:`` section makes it a detector recipe, otherwise a classifier one."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a recipe is a mapping")
    kind: type[TrainRecipe] | type[DetectorRecipe] = DetectorRecipe if "detector" in raw else TrainRecipe
    try:
        return kind.model_validate(raw)
    except Exception as e:
        raise ValueError(f"{path}: {e}") from e
