"""The YOLO detector tier and its dataset builder (CPU, random-init models, drawn images)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

if importlib.util.find_spec("ultralytics") is None:  # found without importing: importing it patches PIL.Image.open
    pytest.skip("ultralytics is in the train extra", allow_module_level=True)

from roadminer.models.base import ImageBatch, build_tier
from roadminer.models.detector import (
    apply_head,
    card_path_for,
    default_head,
    detection_features,
    fit_head,
    read_yolo_file,
    save_yolo,
    sha256_file,
)
from roadminer.training.data import Box, load_dataset
from roadminer.training.detector_train import (
    build_yolo_dataset,
    choose_split,
    image_level_metrics,
    read_eval,
    split_key,
    square_crop,
)


@pytest.fixture(scope="module")
def random_yolo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised yolo11n (built from its yaml, offline) saved in roadminer's safetensors format."""
    d = tmp_path_factory.mktemp("yolo")
    os.environ["YOLO_CONFIG_DIR"] = str(d / "cfg")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    from roadminer.models.detector import import_yolo

    return save_yolo(import_yolo()("yolo11n.yaml").model, d / "random_yolo.safetensors", imgsz=64)


def _scene(seed: int, cone: bool, size: tuple[int, int] = (320, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(x) for x in rng.integers(80, 140, 3)))
    d = ImageDraw.Draw(img)
    w, h = size
    d.rectangle([0, h // 2, w, h], fill=(70, 70, 72))
    if cone:
        x = int(rng.integers(w // 3, 2 * w // 3))
        d.polygon([(x, h // 2 + 10), (x - 15, h // 2 + 60), (x + 15, h // 2 + 60)], fill=(255, 110, 0))
    return img


def test_features_and_head() -> None:
    f = detection_features(np.array([0, 2, 0]), np.array([0.3, 0.9, 0.6]), n_classes=4)
    assert f.tolist()[:5] == [0.6, 0.0, 0.9, 0.0, 0.9]
    assert f[5] == pytest.approx(np.log1p(3))
    assert detection_features(np.zeros(0), np.zeros(0)).tolist() == [0.0] * 6
    head = default_head(4)
    p_none, p_strong = apply_head(head, np.array([[0.0] * 6, [0.9, 0, 0, 0, 0.9, np.log1p(2)]]))
    assert p_none < 0.5 < p_strong
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 20)
    x = np.column_stack([rng.random(40) * 0.3 + 0.6 * y] + [rng.random(40) * 0.1 for _ in range(5)])
    fitted = fit_head(x, y)
    assert len(fitted["coef"]) == 6 and fitted["coef"][0] > 0
    with pytest.raises(ValueError):
        fit_head(x, np.zeros(40, dtype=int))


def test_tier_refuses_pickles_bad_pins_and_weights_that_do_not_fit(random_yolo: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from roadminer.models.shipped import safetensors_metadata

    for pt in ("roadwork_yolo.pt", str(tmp_path / "x.pt"), "weights.pth"):
        with pytest.raises(ValueError, match="pickles and are not loaded"):
            build_tier("yolo", "yolo", {"weights": pt})
    with pytest.raises(ValueError, match="does not match the configured"):
        build_tier("yolo", "yolo", {"weights": str(random_yolo), "sha256": "0" * 64})
    build_tier("yolo", "yolo", {"weights": str(random_yolo), "sha256": sha256_file(random_yolo)})
    with pytest.raises(FileNotFoundError):
        build_tier("yolo", "yolo", {"weights": str(tmp_path / "missing.safetensors")})
    with pytest.raises(FileNotFoundError):
        build_tier("yolo", "yolo", {"weights": "not_shipped_anywhere.safetensors"})
    with pytest.raises(ValueError, match="not a roadminer detector"):  # a classifier file is not a detector
        build_tier("yolo", "yolo", {"weights": "roadwork_classifier.safetensors"})

    state = load_file(str(random_yolo))
    meta = safetensors_metadata(random_yolo.read_bytes())
    key = sorted(state)[0]
    for label, bad_state in (
        ("missing", {k: v for k, v in state.items() if k != key}),
        ("unexpected", {**state, "model.99.extra": state[key].clone()}),
        ("wrong shape", {**state, key: state[key][:1].contiguous()}),
    ):
        path = tmp_path / f"bad_{label.replace(' ', '_')}.safetensors"
        save_file(bad_state, str(path), metadata=meta)
        with pytest.raises(ValueError, match=rf"do not fit.*{label} \[\'model"):
            build_tier("yolo", "yolo", {"weights": str(path)})
    broken = tmp_path / "broken_meta.safetensors"
    save_file(state, str(broken), metadata={**meta, "names": "[1, 2"})
    with pytest.raises(ValueError, match="bad detector metadata"):
        build_tier("yolo", "yolo", {"weights": str(broken)})


def test_tier_answers_in_range(random_yolo: Path) -> None:
    tier = build_tier("yolo", "det", {"weights": str(random_yolo), "conf": 0.001})
    assert tier.imgsz == 64 and tier.describe()["weights"] == str(random_yolo)
    assert tier.classes == [str(i) for i in range(80)]  # yolo11n.yaml: 80 classes named by index
    imgs = [np.asarray(_scene(i, cone=i % 2 == 0, size=s)) for i, s in enumerate([(224, 224), (320, 240), (100, 300)])]
    out = tier.predict(ImageBatch(rgb=imgs))
    assert out.prob.shape == (3,)
    assert np.all((out.prob > 0) & (out.prob < 1)) and not np.any(out.prob == 0.5)
    assert out.extras["features"].shape == (3, tier.n_classes + 2)
    assert len(out.extras["detections"]) == 3
    tier.warmup()


def _photos(shared_data: Path, n: int) -> list[np.ndarray]:
    """Validator-view photos of the shared data: tracon work zones first, then tracon streets without road work."""
    from roadminer.training.detector_train import square_eval_view

    files = []
    for sub in ("roadwork", "no_roadwork"):
        found = sorted((shared_data / "images" / sub).glob("tracon__*.jpg"))
        files += found[:: max(1, len(found) // (n // 2))][: n // 2]
    assert len(files) == n, f"expected {n} tracon photos under {shared_data}/images"
    return [square_eval_view(p) for p in files]


def test_safetensors_round_trip_keeps_every_detection(tmp_path: Path, shared_data: Path) -> None:
    """An ultralytics model in memory (the shipped detector) and its ``save_yolo`` copy, rebuilt from the yaml
    metadata, find the same boxes with the same confidences on real photos: the path of
    scripts/convert_yolo_pt.py, which wrote the shipped file from the old ``.pt``."""
    from roadminer.models.detector import ASSETS_MODELS, load_yolo

    yolo, _ = load_yolo(ASSETS_MODELS / "roadwork_yolo.safetensors")
    path = save_yolo(yolo.model, tmp_path / "rt.safetensors", imgsz=256)
    again, meta = load_yolo(path)
    assert meta["names"] == ["cone", "barrier", "sign", "other"] and meta["imgsz"] == 256
    kw = {"imgsz": 256, "conf": 0.05, "max_det": 50, "device": "cpu", "verbose": False}
    images = [np.ascontiguousarray(im[..., ::-1]) for im in _photos(shared_data, 10)]
    n_boxes = 0
    for a, b in zip(yolo.predict(images, **kw), again.predict(images, **kw), strict=True):
        assert np.array_equal(a.boxes.cls.numpy(), b.boxes.cls.numpy())
        assert np.array_equal(a.boxes.conf.numpy(), b.boxes.conf.numpy())
        assert np.array_equal(a.boxes.xyxy.numpy(), b.boxes.xyxy.numpy())
        n_boxes += len(a.boxes)
    assert n_boxes > 0  # the roadwork photos hold cones the detector finds
    yolo.model.fuse(verbose=False)  # conv+bn folded: the keys no longer match the yaml's architecture
    with pytest.raises(ValueError, match="fuse"):
        save_yolo(yolo.model, tmp_path / "fused.safetensors", imgsz=256)


def test_square_crop_moves_boxes() -> None:
    img = Image.new("RGB", (400, 200))
    boxes = [Box(0, 0.5, 0.5, 0.1, 0.2), Box(2, 0.05, 0.5, 0.08, 0.2), Box(1, 0.27, 0.5, 0.1, 0.2)]
    out, kept = square_crop(img, boxes, 100)
    assert out.size == (100, 100)
    # crop is x in [100, 300]: the centre box stays centred and doubles in relative width; the box at
    # x=0.05 is outside; the box at 0.27 (88..128 px) keeps 28/40 = 70% of its width -> kept, clipped.
    assert [b.cls for b in kept] == [0, 1]
    assert kept[0].cx == pytest.approx(0.5) and kept[0].w == pytest.approx(0.2) and kept[0].h == pytest.approx(0.2)
    assert kept[1].cx - kept[1].w / 2 == pytest.approx(0.0)


def _make_folder(root: Path) -> None:
    rows = []
    spec = [
        ("tracon__train__a1", 1, "tracon", "tracon", True),
        ("tracon__train__a2", 0, "tracon", "tracon", False),
        ("tracon__val__b1", 1, "tracon", "tracon", True),
        ("tracon__val__b2", 0, "tracon", "tracon", False),
        ("pranav__train__video_1001", 1, "pranav", "pranav:video1", True),
        ("pranav__train__video_3001", 1, "pranav", "pranav:video3", True),
        ("rcone__c1", 1, "rcone", "rcone", False),  # a positive without boxes
        ("rcone__c2", 0, "rcone", "rcone", False),
        ("camvid__train__0001TP_1", 0, "camvid", "camvid:0001TP", False),
        ("camvid__train__0006R0_1", 0, "camvid", "camvid:0006R0", False),
    ]
    for i, (stem, label, source, group, boxed) in enumerate(spec):
        sub = "roadwork" if label else "no_roadwork"
        p = root / "images" / sub / f"{stem}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        _scene(i, cone=bool(label), size=(320, 240)).save(p, quality=90)
        if boxed:
            lab = root / "labels" / sub / f"{stem}.txt"
            lab.parent.mkdir(parents=True, exist_ok=True)
            lab.write_text("0 0.500000 0.600000 0.100000 0.200000\n2 0.520000 0.300000 0.050000 0.080000\n")
        rows.append({"file": f"images/{sub}/{stem}.jpg", "label": sub, "source": source, "group": group})
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_dataset_builder_layout(tmp_path: Path) -> None:
    _make_folder(tmp_path / "src")
    samples = load_dataset(tmp_path / "src")
    keys = {s.name: split_key(s) for s in samples}
    assert keys["tracon__val__b1.jpg"] == "tracon:val" and keys["pranav__train__video_3001.jpg"] == "pranav:video3"
    split = choose_split(samples, val_frac=0.3, seed=1, holdout_sources=["rcone"])
    assert split["rcone"] == "val"
    for src in ("tracon", "pranav", "camvid"):  # each multi-unit source keeps units on both sides
        sides = {v for k, v in split.items() if k.startswith(src)}
        assert sides == {"train", "val"}, (src, split)

    out = tmp_path / "yolo"
    info = build_yolo_dataset(samples, out, size=96, val_frac=0.3, seed=1, holdout_sources=["rcone"])
    data_yaml = (out / "data.yaml").read_text()
    assert "train: images/train" in data_yaml and "val: images/val" in data_yaml and "0: cone" in data_yaml
    train_imgs = sorted(p.stem for p in (out / "images" / "train").glob("*.jpg"))
    val_imgs = sorted(p.stem for p in (out / "images" / "val").glob("*.jpg"))
    assert not set(train_imgs) & set(val_imgs)
    assert "rcone__c1" not in train_imgs + val_imgs  # never a background
    assert [p.stem for p in (out / "images" / "eval_only").glob("*.jpg")] == ["rcone__c1"]
    for split_name, names in (("train", train_imgs), ("val", val_imgs)):
        for stem in names:
            lab = out / "labels" / split_name / f"{stem}.txt"
            assert lab.is_file()
            lines = lab.read_text().split()
            if "__a1" in stem or "__b1" in stem or "video" in stem:
                assert lines[0] == "0" and len(lines) == 10
            else:
                assert lines == []  # a background image
            assert Image.open(out / "images" / split_name / f"{stem}.jpg").size == (96, 96)
    # every held-out image is in the image-level evaluation, training images never are
    ev = read_eval(out)
    assert {it.path.stem for it in ev} == set(val_imgs) | {"rcone__c1"}
    assert {it.key for it in ev} == set(info["val_keys"])
    assert info["boxes"]["train:cone"] >= 1


def test_image_level_metrics_grouped() -> None:
    from roadminer.training.detector_train import EvalItem

    rng = np.random.default_rng(0)
    items, feats = [], []
    for i in range(60):
        y = i % 2
        items.append(EvalItem(Path(f"{i}.jpg"), y, "a" if i < 30 else "b", f"g{i % 6}", bool(y)))
        c = 0.7 * y + 0.2 * rng.random()
        feats.append([c, 0, 0, 0, c, np.log1p(y)])
    metrics, head = image_level_metrics(np.array(feats), items)
    assert metrics["auc_max_conf"] == pytest.approx(1.0)
    assert metrics["auc_head_oof"] > 0.9 and metrics["mcc_head_oof"] > 0.8
    assert set(metrics["per_source"]) == {"a", "b"}
    assert len(head["coef"]) == 6


def test_shipped_detector_loads_from_safetensors_and_finds_roadwork(shared_data: Path) -> None:
    from roadminer.models.detector import ASSETS_MODELS

    weights = ASSETS_MODELS / "roadwork_yolo.safetensors"
    card = json.loads(card_path_for(weights).read_text())
    _, meta = read_yolo_file(weights)
    assert card["sha256"] == sha256_file(weights)
    assert meta["names"] == card["classes"] and meta["imgsz"] == card["imgsz"] == 256
    assert meta["head"] == card["head"] and meta["count_conf"] == card["count_conf"]
    tier = build_tier("yolo", "yolo", {"weights": "roadwork_yolo.safetensors"})
    photos = _photos(shared_data, 12)
    prob = tier.predict(ImageBatch(rgb=photos)).prob
    assert np.all((prob > 0) & (prob < 1))
    assert prob[: len(photos) // 2].mean() > prob[len(photos) // 2 :].mean()  # roadwork first, then not


def test_train_detector_end_to_end(tmp_path: Path) -> None:
    """One tiny epoch on drawn scenes: weights, a card whose sha256 matches, metrics, a loadable tier."""
    from roadminer.training.detector_train import train_detector

    _make_folder(tmp_path / "src")
    card = train_detector(
        tmp_path / "src",
        tmp_path / "out" / "tiny",
        epochs=1,
        imgsz=64,
        batch=4,
        workers=0,
        val_frac=0.3,
        seed=1,
        holdout_sources=["rcone"],
        cache=False,
    )
    weights = tmp_path / "out" / "tiny.safetensors"
    assert weights.is_file() and card["sha256"] == sha256_file(weights)
    assert not list((tmp_path / "out").glob("*.pt"))  # ultralytics' own checkpoints stay in the scratch folder
    saved = json.loads(card_path_for(weights).read_text())
    assert saved["metrics"]["image_level_val"]["n"] >= 3
    assert "map50" in saved["metrics"]["boxes_val"]
    _, meta = read_yolo_file(weights)
    assert meta["head"] == saved["head"] and meta["imgsz"] == 64 and meta["names"][0] == "cone"
    tier = build_tier("yolo", "tiny", {"weights": str(weights)})
    assert tier.predict(ImageBatch(rgb=[np.asarray(_scene(0, cone=True))])).prob.shape == (1,)


def test_loading_ultralytics_leaves_pil_open_alone() -> None:
    """ultralytics patches PIL.Image.open to pip-install a HEIF plugin on unknown images; the miner decodes
    untrusted bytes with PIL, so the original must be back after the import."""
    from PIL import Image

    from roadminer.imaging.decode import ImageDecodeError, ImagePolicy, decode_rgb
    from roadminer.models.detector import import_yolo

    import_yolo()
    assert Image.open.__module__ == "PIL.Image"
    with pytest.raises(ImageDecodeError, match="not an accepted format"):
        decode_rgb(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, ImagePolicy(formats=("JPEG",)))


def test_square_copy_keeps_boxes_groups_and_size(tmp_path: Path) -> None:
    from roadminer.training.detector_train import export_square_copy

    _make_folder(tmp_path / "src")
    info = export_square_copy(tmp_path / "src", tmp_path / "sq", size=64)
    copy = load_dataset(tmp_path / "sq")
    assert info["n"] == len(copy) == len(load_dataset(tmp_path / "src"))
    for s in copy:
        assert s.read_pil().size == (64, 64)
    orig = {s.name: s for s in load_dataset(tmp_path / "src")}
    assert {s.name: (s.label, s.group) for s in copy} == {k: (v.label, v.group) for k, v in orig.items()}
    assert any(s.boxes for s in copy) and all(bool(s.boxes) <= bool(orig[s.name].boxes) for s in copy)
