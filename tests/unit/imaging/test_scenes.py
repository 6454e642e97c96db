"""Drawn street scenes: seeded, sized, written as class folders, and carrying the roadwork signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from roadminer.imaging.scenes import draw_scene, scene_rng, write_scene_folder


def _work_zone_share(img: Image.Image) -> float:
    """Share of saturated orange/red pixels next to white ones (striped cones, drums, barriers, vests)."""
    hsv = np.asarray(img.convert("HSV"), dtype=np.int16)
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    warm = ((h <= 25) | (h >= 245)) & (s >= 140) & (v >= 110)
    white = (s < 50) & (v > 170)
    near_white = np.zeros_like(white)
    for dy in (-2, 0, 2):
        for dx in (-2, 0, 2):
            near_white |= np.roll(np.roll(white, dy, axis=0), dx, axis=1)
    return float((warm & near_white).mean())


def test_seeded_and_sized() -> None:
    a = draw_scene(np.random.default_rng(3), True, size=(320, 240))
    b = draw_scene(np.random.default_rng(3), True, size=(320, 240))
    c = draw_scene(np.random.default_rng(4), True, size=(320, 240))
    assert a.size == (320, 240) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    sq = draw_scene(np.random.default_rng(0), False, size=224)
    assert sq.size == (224, 224)


def test_scenes_are_not_flat() -> None:
    img = np.asarray(draw_scene(scene_rng(0, 0), False))
    assert img.std() > 20
    # sky on top is brighter / bluer than the asphalt at the bottom centre on average
    assert img[:20].mean() > img[-20:, 200:300].mean()


def test_roadwork_scenes_carry_more_work_zone_colour() -> None:
    pos = [_work_zone_share(draw_scene(scene_rng(1, i), True)) for i in range(32)]
    neg = [_work_zone_share(draw_scene(scene_rng(1, 100 + i), False)) for i in range(32)]
    # Not separable by one cue alone (negatives have orange cars and autumn trees), but shifted.
    assert np.median(pos) > np.median(neg)
    assert max(neg) > 0  # distractors exist
    # Rank statistic (AUC) of the single colour cue.
    auc = np.mean([[p > n for n in neg] for p in pos])
    assert auc > 0.8


def test_write_scene_folder(tmp_path: Path) -> None:
    counts = write_scene_folder(tmp_path / "scenes", n=3, seed=5, size=(160, 120))
    assert counts == {"roadwork": 3, "no_roadwork": 3}
    for sub in ("roadwork", "no_roadwork"):
        files = sorted((tmp_path / "scenes" / sub).glob("*.jpg"))
        assert len(files) == 3
        with Image.open(files[0]) as im:
            assert im.format == "JPEG" and im.size == (160, 120)
    # Same seed, same bytes.
    write_scene_folder(tmp_path / "again", n=3, seed=5, size=(160, 120))
    a = (tmp_path / "scenes" / "roadwork" / "scene_5_00001.jpg").read_bytes()
    b = (tmp_path / "again" / "roadwork" / "scene_5_00001.jpg").read_bytes()
    assert a == b
