"""The detector recipe: its file is told apart from a classifier recipe, level-3 photometric copies keep their
boxes, the COCO YOLOv5n backbone loads into ultralytics' yolov5n layout, the out-of-fold head never sees its own
source, and ``train-recipe configs/train/detector.yaml --cv source`` writes rows ``cascade-stack`` can pool.
Real shared photos and weights (skips without them)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from roadminer.cli import app
from roadminer.training.data import Sample, load_image_folder
from roadminer.training.recipe import DetectorRecipe, TrainRecipe, load_recipe
from testkit.data import tiny_copy

REPO = Path(__file__).resolve().parents[3]
RECIPE = REPO / "configs" / "train" / "detector.yaml"
COCO = REPO.parent / "shared" / "weights" / "yolov5n_coco.safetensors"


@pytest.fixture(scope="module")
def tiny(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_copy(shared_data, tmp_path_factory.mktemp("tiny_det"))


@pytest.fixture(scope="module")
def coco() -> Path:
    if not COCO.is_file():
        pytest.skip(f"COCO YOLOv5n weights not found at {COCO}")
    return COCO


def test_detector_recipe_file_is_a_detector_recipe_and_refuses_unknown_keys(tmp_path: Path) -> None:
    rec = load_recipe(RECIPE)
    assert isinstance(rec, DetectorRecipe)
    assert rec.detector.model == "yolov5n.yaml" and rec.detector.init and rec.detector.init.endswith(".safetensors")
    assert rec.eval_seed == TrainRecipe.from_yaml(REPO / "configs/train/lite0.yaml").eval_seed  # rows line up
    with pytest.raises(ValueError, match="detector recipe"):
        TrainRecipe.from_yaml(RECIPE)
    raw = yaml.safe_load(RECIPE.read_text())
    raw["detector"]["epoch"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="epoch"):
        load_recipe(bad)
    raw["detector"].pop("epoch")
    raw["detector"]["model"] = "yolov5n.pt"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="pickle"):
        load_recipe(bad)


def test_photometric_copies_keep_their_boxes(tiny: Path, tmp_path: Path) -> None:
    from roadminer.training.detector_train import build_yolo_dataset

    info = build_yolo_dataset(load_image_folder(tiny), tmp_path / "ds", size=224, val_frac=0.0,
                              distorted_copies=1, max_negatives_per_source=None)
    assert "val: images/probe" in (tmp_path / "ds" / "data.yaml").read_text()  # nothing held out
    probe = sorted(p.name for p in (tmp_path / "ds" / "images" / "probe").iterdir())
    assert 0 < len(probe) <= 32 and all((tmp_path / "ds" / "images" / "train" / n).is_file() for n in probe)
    labels = tmp_path / "ds" / "labels" / "train"
    originals = sorted(p for p in labels.glob("*.txt") if not p.stem.endswith("__d0"))
    assert info["counts"]["train:distorted"] == len(originals) > 0
    boxed = 0
    for lab in originals:
        copy = labels / f"{lab.stem}__d0.txt"
        assert copy.read_text() == lab.read_text()
        boxed += bool(lab.read_text())
        a = np.asarray(Image.open(tmp_path / "ds" / "images" / "train" / f"{lab.stem}.jpg"), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "ds" / "images" / "train" / f"{lab.stem}__d0.jpg"), dtype=np.int16)
        assert a.shape == b.shape
    assert boxed > 0


def test_coco_backbone_loads_into_the_yolov5n_layout(coco: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from roadminer.models.detector import import_yolo
    from roadminer.training.detector_train import init_state

    YOLO = import_yolo()
    model = YOLO("yolov5n.yaml").model
    state = init_state(coco, model)
    assert len(state) == 342  # layers 0-23: backbone and neck, as the weights README says
    src = load_file(str(coco))
    model.load_state_dict(state, strict=False)
    key = "model.23.cv3.conv.weight"
    assert torch.equal(model.state_dict()[key], src[key].to(model.state_dict()[key].dtype))
    with pytest.raises(ValueError, match="does not fit"):
        init_state(coco, YOLO("yolo11n.yaml").model)


def test_out_of_fold_head_never_sees_its_own_source() -> None:
    from roadminer.training.detector_recipe import loso_head_logits

    rng = np.random.default_rng(0)
    samples = [Sample(label=int(i % 2), path=Path(f"{s}{i}.jpg"), source=s, group=s) for s in "abc" for i in range(30)]
    y = np.array([s.label for s in samples])
    feats = rng.random((4, len(samples), 6)) + y[None, :, None] * 0.5
    z = loso_head_logits(feats, samples)
    flipped = [Sample(label=1 - s.label if s.source == "a" else s.label, path=s.path, source=s.source,
                      group=s.group) for s in samples]
    z2 = loso_head_logits(feats, flipped)
    a = np.array([s.source == "a" for s in samples])
    assert np.array_equal(z[:, a], z2[:, a])  # source a's rows: a head fitted without a's labels
    assert not np.allclose(z[:, ~a], z2[:, ~a])  # the others' heads did learn from a
    assert z.shape == (4, len(samples)) and np.isfinite(z).all()


def test_train_recipe_detector_cv_writes_stackable_rows(tiny: Path, tmp_path: Path) -> None:
    raw = yaml.safe_load(RECIPE.read_text())
    raw["detector"].update({"epochs": 1, "time_min": None, "imgsz": 64, "batch": 4, "distorted_copies": 0})
    raw["parallel"] = 2
    recipe = tmp_path / "det.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp_path / "m" / "det.safetensors"
    args = ["train-recipe", str(recipe), "--data", str(tiny), "--prepared", "--out", str(out), "--cv", "source",
            "--report", str(tmp_path / "cv" / "yolo"), "--workers", "2", "--device", "cpu"]
    init = str(COCO) if COCO.is_file() else ""
    r = CliRunner().invoke(app, [*args, "--init", init])
    assert r.exit_code == 0, r.output
    samples = load_image_folder(tiny)
    cv = json.loads((tmp_path / "cv" / "yolo-source.json").read_text())
    assert cv["names"] == [s.name for s in samples] and cv["levels"] == [0, 1, 2, 3]
    z = np.asarray(cv["oof_logits"], dtype=float)
    assert z.shape == (4, len(samples)) and np.isfinite(z).all()
    assert np.asarray(cv["oof_features"]).shape == (4, len(samples), 6)
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert set(card["train_seconds"]) == {s.source for s in samples} | {"all"}
    if init:
        assert card["init_sha256"] == hashlib.sha256(COCO.read_bytes()).hexdigest()
    from roadminer.models.detector import YoloTier

    tier = YoloTier(weights=str(out), imgsz=64)
    assert tier.head == card["head"] and len(card["head"]["coef"]) == 6
    r = CliRunner().invoke(app, ["train-recipe", str(recipe), "--data", str(tiny), "--prepared", "--out", str(out),
                                 "--cv", "group:wzcity"])
    assert r.exit_code == 2 and "by source only" in r.output


def test_detector_rows_are_the_classifiers_evaluation_views(tiny: Path) -> None:
    """The detector's out-of-fold rows are scored on exactly the views a classifier recipe's CV scores."""
    import torch

    from roadminer.training.bank import render_bank, render_eval_views
    from roadminer.training.recipe import RecipeBank

    samples = load_image_folder(tiny)
    bank = render_bank(samples, RecipeBank(views_scale=1, kmin=1, kmax=1, paste_frac=0.0), eval_seed=1234,
                       workers=2, device=torch.device("cpu"))
    views = render_eval_views(samples, 1234, workers=1)
    assert views.shape == (4 * len(samples), 224, 224, 3)
    assert np.array_equal(views, bank.eval_views.numpy())
    assert not np.array_equal(views, render_eval_views(samples, 99, workers=2))
