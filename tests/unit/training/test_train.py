"""End to end on CPU: train a tiny classifier on drawn scenes, serve it as a tier, evaluate the cascade."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from roadminer.imaging.scenes import write_scene_folder


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    write_scene_folder(root, 16, seed=3, size=(160, 120))
    return root


@pytest.fixture(scope="module")
def trained(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from roadminer.core.config import TrainConfig
    from roadminer.training.train import train

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("models") / "tiny"
    cfg = TrainConfig(epochs=2, samples_per_epoch=32, batch_size=16, workers=0, calib_frac=0.25, seed=1)
    card = train(scenes, out, cfg, progress=False)
    assert card["data"]["n"] == 32
    assert set(card["calibration"]) >= {"temperature", "bias", "threshold"}
    return out


def test_train_writes_loadable_model_and_card(trained: Path) -> None:
    from roadminer.models.base import ImageBatch, build_tier

    card = json.loads((trained / "card.json").read_text())
    assert card["arch"] == "efficientnet-lite0" and card["train_config"]["levels"] == [0, 1, 2, 3]
    assert (trained / "model.safetensors").stat().st_size < 25 * 2**20
    tier = build_tier("classifier", "clf", {"weights": str(trained / "model.safetensors")})
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (224, 224, 3), dtype=np.uint8), rng.integers(0, 255, (100, 300, 3), dtype=np.uint8)]
    out = tier.predict(ImageBatch(rgb=imgs)).prob
    assert out.shape == (2,) and np.all((out > 0) & (out < 1)) and not np.any(out == 0.5)
    assert tier.describe()["arch"] == "efficientnet-lite0"


def test_fine_tune_from_checkpoint_with_extra_dirs(trained: Path, scenes: Path, tmp_path: Path) -> None:
    from roadminer.core.config import TrainConfig
    from roadminer.training.train import train

    extra = tmp_path / "hard"
    write_scene_folder(extra, 2, seed=9, size=(160, 120))
    cfg = TrainConfig(epochs=1, samples_per_epoch=16, batch_size=16, workers=0, calib_frac=0.0)
    card = train(
        scenes, tmp_path / "ft", cfg, extra_dirs=[extra], init_checkpoint=trained / "model.safetensors", progress=False
    )
    assert card["data"]["n"] == 36 and card["train_config"]["init_checkpoint"].endswith("model.safetensors")
    assert card["calibration"]["temperature"] == 1.0


def test_eval_command_runs_configured_cascade(trained: Path, scenes: Path, tmp_path: Path) -> None:
    from roadminer.cli import app

    cfg = tmp_path / "cascade.yaml"
    cfg.write_text(
        "cascade:\n  tiers:\n"
        "    - {name: clf, kind: classifier, exit_confidence: 0.5, "
        f"options: {{weights: '{trained}/model.safetensors'}}}}\n"
        "    - {name: colour, kind: colour}\n"
    )
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(
        app,
        [
            "eval",
            "--images",
            str(scenes),
            "--levels",
            "0,3",
            "--seed",
            "5",
            "--config",
            str(cfg),
            "--out",
            str(out),
            "--limit",
            "12",
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["n"] == 24 and set(report["per_level"]) == {"0", "3"}
    for key in ("mcc", "accuracy", "auc", "brier"):
        assert key in report
    assert report["per_tier"]["clf"]["exit_rate"] == 1.0  # exit_confidence 0.5: colour only as fallback
    assert report["per_tier"]["colour"]["n"] == 0


def test_eval_rejects_bad_levels(scenes: Path) -> None:
    from roadminer.cli import app

    res = CliRunner().invoke(app, ["eval", "--images", str(scenes), "--levels", "0,7"])
    assert res.exit_code != 0
