"""The classifier tier: safetensors round trip, the shipped default model, bad files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from roadminer.imaging.scenes import draw_scene, scene_rng
from roadminer.models.base import ImageBatch
from roadminer.models.classifier import (
    DEFAULT_MODEL,
    ClassifierTier,
    build_model,
    load_classifier,
    save_classifier,
)

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_round_trip_keeps_answers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, prep = build_model("efficientnet-lite0", pretrained=False)
    model.eval()
    path = save_classifier(model, tmp_path / "m.safetensors", "efficientnet-lite0", prep, extra={"version": "t1"})
    loaded, prep2, extra = load_classifier(path)
    assert prep2 == prep and extra["version"] == "t1" and extra["arch"] == "efficientnet-lite0"
    x = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert a.shape == (2,)
    assert torch.allclose(a, b, atol=0.05)  # fp16 storage


def test_pretrained_imagenet_weights_load_offline() -> None:
    model, prep = build_model("efficientnet-lite0", pretrained=True)
    assert prep["mean"] == [0.5] * 3 and prep["input_size"] == 224
    assert model.body._fc.out_features == 1


def test_not_a_classifier_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a roadminer classifier"):
        load_classifier(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError):
        load_classifier(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="unknown classifier arch"):
        build_model("resnet-9000")


@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="shipped model not present")
def test_shipped_default_model_and_card() -> None:
    card = json.loads((DEFAULT_MODEL.parent / "roadwork_classifier.card.json").read_text())
    assert DEFAULT_MODEL.stat().st_size <= 25 * 2**20
    # the card names the weights it describes and the recipe that makes them
    assert card["weights_sha256"] == hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest()
    assert (REPO_ROOT / card["recipe_file"]).is_file() and card["leave_one_source_out"]["pooled"]["n"] > 0
    tier = ClassifierTier(weights=None)
    size = (320, 240)
    imgs = [np.asarray(draw_scene(scene_rng(11, i), bool(i % 2), size).resize((224, 224))) for i in range(4)]
    p = tier.predict(ImageBatch(rgb=imgs)).prob
    assert p.shape == (4,) and np.all((p > 0) & (p < 1))


def test_default_cascade_loads_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    from roadminer.cascade.router import EarlyExitRouter
    from roadminer.core.config import Settings

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    router = EarlyExitRouter.from_config(Settings().cascade)
    rgb = np.asarray(draw_scene(scene_rng(2, 1), True, (224, 224)))
    res = router.predict(ImageBatch(rgb=[rgb], payloads=[b""], keys=["k"]))
    assert 0 < float(res.prob[0]) < 1 and float(res.prob[0]) != 0.5
