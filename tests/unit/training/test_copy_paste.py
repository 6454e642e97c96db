"""Copy-paste synthesis, the downsized export used for GPU training, and the model card renderer."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from roadminer.training.copy_paste import ObjectBank
from roadminer.training.data import Box, Sample, export_downsized, load_image_folder


def _cone_photo() -> bytes:
    img = Image.new("RGB", (200, 160), (90, 90, 90))
    ImageDraw.Draw(img).polygon([(100, 40), (80, 120), (120, 120)], fill=(255, 110, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_bank_takes_boxed_positives_only_and_paste_changes_the_road() -> None:
    box = Box(0, 0.5, 0.5, 0.3, 0.6)
    pos = Sample(label=1, data=_cone_photo(), boxes=[box], has_boxes=True)
    neg_with_box = Sample(label=0, data=_cone_photo(), boxes=[box], has_boxes=True)
    other = Sample(label=1, data=_cone_photo(), boxes=[Box(3, 0.5, 0.5, 0.3, 0.6)], has_boxes=True)
    bank = ObjectBank.from_samples([pos, neg_with_box, other])
    assert len(bank) == 1 and bank.cutouts[0].cls == 0
    scene = Image.new("RGB", (320, 240), (60, 60, 60))
    out = bank.paste(scene, np.random.default_rng(0))
    assert out.size == scene.size
    diff = np.abs(np.asarray(out, dtype=int) - np.asarray(scene, dtype=int)).sum(axis=2)
    assert diff.sum() > 0
    rows = np.nonzero(diff.any(axis=1))[0]
    assert rows.min() > 240 * 0.3  # objects stand below the horizon, not in the sky
    assert ObjectBank([]).paste(scene, np.random.default_rng(0)) is scene


def test_export_downsized_keeps_layout_boxes_and_groups(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for sub, label in (("roadwork", 1), ("no_roadwork", 0)):
        (src / sub).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (640, 480), (40 * i, 100, 50 * label)).save(src / sub / f"cam__{sub}_{i}.jpg")
    (src / "labels" / "roadwork").mkdir(parents=True)
    (src / "labels" / "roadwork" / "cam__roadwork_0.txt").write_text("0 0.5 0.5 0.1 0.2\n")
    info = export_downsized(src, tmp_path / "small", short_side=120, max_per_source={"cam": 6})
    assert info["n"] == 6
    small = load_image_folder(tmp_path / "small")
    assert len(small) == 6 and all(min(Image.open(s.path).size) == 120 for s in small)
    assert {s.source for s in small} == {"cam"}
    boxed = [s for s in small if s.has_boxes]
    assert all(b.cls == 0 and abs(b.cx - 0.5) < 1e-6 for s in boxed for b in s.boxes)


def test_card_markdown_has_cv_table() -> None:
    from roadminer.training.card import render_markdown

    metric = {"n": 8, "positives": 4, "negatives": 4, "mcc": 0.5, "auc": 0.8, "recall": 0.75, "fpr": 0.25}
    report = {
        "levels": [0, 3],
        "per_source": {
            "gtsdb": {
                **metric,
                "per_level": {"0": metric, "3": metric},
                "sign_positives_recall": 0.1,
                "scene_positives_recall": 0.3,
            }
        },
        "pooled": {**metric, "per_level": {"0": metric, "3": metric}},
    }
    card = {
        "name": "m",
        "version": "v1",
        "arch": "efficientnet-lite0",
        "input": {"input_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3},
        "calibration": {"temperature": 1.2, "bias": 0.1, "threshold": 0.6},
        "data": {"counts": {"gtsdb": {"roadwork": 2, "no_roadwork": 2}}},
        "train_config": {"epochs": 3},
        "grouped_cv": report,
        "colour_baseline_cv": report,
    }
    md = render_markdown(card, "## Known weaknesses\n- few work zones")
    assert "| gtsdb | 4 | MCC 0.500, AUC 0.800" in md and "sign positives 0.100" in md
    assert md.rstrip().endswith("- few work zones")
