"""Datasets: image folders (with manifest + YOLO boxes), the reference parquet layout, grouped splits."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from roadminer.imaging.scenes import draw_scene, scene_rng
from roadminer.training.data import (
    DatasetError,
    Sample,
    balanced_weights,
    grouped_kfold,
    holdout_split,
    leave_one_out_folds,
    load_dataset,
    load_image_folder,
    load_parquet,
    summarize,
)


def _jpeg(label: int, i: int) -> bytes:
    buf = io.BytesIO()
    draw_scene(scene_rng(7, i), bool(label), (96, 72)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _folder(root: Path) -> Path:
    """Two sources; source a has groups a:1 and a:2; one positive carries YOLO boxes."""
    rows = ["file,label,source,group"]
    for label, sub in ((1, "roadwork"), (0, "no_roadwork")):
        d = root / "images" / sub
        d.mkdir(parents=True)
        for i in range(6):
            src = "a" if i < 4 else "b"
            name = f"{src}__clip__{sub}_{i}.jpg"
            (d / name).write_bytes(_jpeg(label, i + 10 * label))
            group = f"a:{1 + i % 2}" if src == "a" else "b"
            rows.append(f"images/{sub}/{name},{sub},{src},{group}")
    (root / "labels" / "roadwork").mkdir(parents=True)
    (root / "labels" / "roadwork" / "a__clip__roadwork_0.txt").write_text("0 0.5 0.5 0.2 0.3\n2 0.1 0.1 0.05 0.05\n")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_image_folder_with_manifest_and_boxes(tmp_path: Path) -> None:
    samples = load_image_folder(_folder(tmp_path / "ds"))
    assert len(samples) == 12
    assert summarize(samples) == {"a": {"roadwork": 4, "no_roadwork": 4}, "b": {"roadwork": 2, "no_roadwork": 2}}
    boxed = [s for s in samples if s.has_boxes]
    assert len(boxed) == 1 and boxed[0].label == 1
    assert [b.cls for b in boxed[0].boxes] == [0, 2]
    assert {s.group for s in samples} == {"a:1", "a:2", "b"}
    assert samples[0].read_rgb().shape == (72, 96, 3)


def test_plain_folder_takes_source_from_file_name(tmp_path: Path) -> None:
    for label, sub in ((1, "roadwork"), (0, "no_roadwork")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / f"cam__{sub}.jpg").write_bytes(_jpeg(label, label))
        (tmp_path / sub / f"plain_{sub}.jpg").write_bytes(_jpeg(label, 5 + label))
        (tmp_path / sub / "notes.txt").write_text("not an image")
    samples = load_dataset(tmp_path)
    assert len(samples) == 4
    assert {s.source for s in samples} == {"cam", tmp_path.name}


def test_missing_layout_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="roadwork"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "nope")


def test_reference_parquet_layout(tmp_path: Path) -> None:
    """The reference dataset's schema: HF Image struct {bytes, path}, int label, scene_description."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [{"bytes": _jpeg(i % 2, i), "path": f"img{i}.jpg"} for i in range(6)]
    table = pa.table(
        {
            "image": pa.array(images, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "label": pa.array([i % 2 for i in range(6)], type=pa.int64()),
            "scene_description": [f"a road, scene {i}" for i in range(6)],
            "source": ["natix"] * 6,
        }
    )
    path = tmp_path / "train-00000.parquet"
    pq.write_table(table, path)
    samples = load_parquet(path)
    assert [s.label for s in samples] == [0, 1, 0, 1, 0, 1]
    assert samples[1].meta["scene_description"] == "a road, scene 1"
    assert samples[0].source == "natix"
    assert samples[0].read_rgb().shape == (72, 96, 3)
    # a folder of parquet files loads too, and raw-bytes cells with string labels are accepted
    raw = pa.table({"image": [_jpeg(1, 1)], "label": ["roadwork"]})
    pq.write_table(raw, tmp_path / "extra.parquet")
    assert len(load_dataset(tmp_path)) == 7


def test_parquet_bad_schema(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"picture": [b"x"], "label": [1]}), tmp_path / "bad.parquet")
    with pytest.raises(DatasetError, match="'image'"):
        load_parquet(tmp_path / "bad.parquet")
    pq.write_table(pa.table({"image": [_jpeg(1, 0)], "label": [7]}), tmp_path / "bad2.parquet")
    with pytest.raises(DatasetError, match="0 or 1"):
        load_parquet(tmp_path / "bad2.parquet")


def test_splits_never_cut_a_group(tmp_path: Path) -> None:
    samples = load_image_folder(_folder(tmp_path / "ds"))
    folds = list(leave_one_out_folds(samples, by="source"))
    assert [f[0] for f in folds] == ["a", "b"]
    for _, tr, va in folds:
        assert not {samples[i].source for i in tr} & {samples[i].source for i in va}
    for tr, va in grouped_kfold(samples, k=3, seed=1):
        assert not {samples[i].group for i in tr} & {samples[i].group for i in va}
    tr, va = holdout_split(samples, 0.3, seed=0)
    assert len(va) and not {samples[i].group for i in tr} & {samples[i].group for i in va}
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(samples)))


def test_balanced_weights_equal_labels_and_damp_big_sources() -> None:
    from roadminer.training.data import Sample

    samples = [Sample(label=0, source="big") for _ in range(90)] + [Sample(label=0, source="small") for _ in range(10)]
    samples += [Sample(label=1, source="pos") for _ in range(5)]
    w = balanced_weights(samples, source_power=0.5)
    assert w.sum() == pytest.approx(1.0)
    labels = np.array([s.label for s in samples])
    assert w[labels == 1].sum() == pytest.approx(0.5)
    big = w[:90].sum() / w[90:100].sum()
    assert big == pytest.approx(3.0)  # sqrt(90/10): between "rows equal" (9) and "sources equal" (1)


def test_colour_loso_fold_ignores_held_out_labels() -> None:
    """The fit that scores a held-out source sees nothing of that source, its label counts included."""
    from roadminer.training.colour_fit import colour_loso_oof

    rng = np.random.default_rng(0)
    n = 30
    src = ["a"] * n + ["b"] * n + ["c"] * n
    y_ab = rng.integers(0, 2, 2 * n).tolist()
    feats = rng.normal(0, 1, (1, 3 * n, 5))
    feats[0, : 2 * n, 0] += 2.0 * np.asarray(y_ab)

    def oof_c(c_labels: list[int]) -> np.ndarray:
        samples = [Sample(label=lab, source=s, group=s) for lab, s in zip(y_ab + c_labels, src, strict=True)]
        return colour_loso_oof(samples, feats)[:, 2 * n :]

    all_pos = oof_c([1] * n)
    mixed = oof_c([1] * (n - 3) + [0] * 3)
    np.testing.assert_allclose(all_pos, mixed)
