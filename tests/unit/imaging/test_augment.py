"""Validator-parity augmentation: parameter tables and ranges, not just that it runs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from roadminer.imaging import augment as A


def _gradient(h: int = 300, w: int = 400) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) % 256)], axis=-1).astype(np.uint8)


def _quadrants(size: int = 224) -> np.ndarray:
    """Four differently coloured quadrants: flips move colours to known corners."""
    img = np.zeros((size, size, 3), np.uint8)
    h = size // 2
    img[:h, :h] = (255, 0, 0)
    img[:h, h:] = (0, 255, 0)
    img[h:, :h] = (0, 0, 255)
    img[h:, h:] = (255, 255, 0)
    return img


def _luma(img: np.ndarray) -> np.ndarray:
    x = img.astype(np.float64)
    return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def test_parameter_tables_match_reference() -> None:
    assert A.DISTORTION_PARAMS["CS"] == (0.4, 0.3, 0.2, 0.1, 0.0)
    assert A.DISTORTION_PARAMS["CC"] == (0.85, 0.725, 0.6, 0.475, 0.35)
    assert A.DISTORTION_PARAMS["JPEG"] == (2, 3, 4, 5, 6)
    assert A.DISTORTION_PARAMS["GNC"] == (0.001, 0.002, 0.005, 0.01, 0.05)
    assert A.DISTORTION_PARAMS["GB"] == (7, 9, 13, 17, 21)
    assert [n for n, _ in A.LEVEL_DISTORTIONS[2]] == ["CS", "CC", "JPEG"]
    assert {m for _, m in A.LEVEL_DISTORTIONS[2]} == {1}
    assert [n for n, _ in A.LEVEL_DISTORTIONS[3]] == ["CS", "CC", "JPEG", "GNC", "GB"]
    assert {m for _, m in A.LEVEL_DISTORTIONS[3]} == {2}
    assert A.distortion_param("GB", 3) == 13
    with pytest.raises(ValueError):
        A.distortion_param("CS", 0)


def test_level0_is_center_crop_then_resize_exactly() -> None:
    src = _gradient(300, 400)
    out = A.augment(src, 0, np.random.default_rng(1))
    expected = Image.fromarray(src).crop((50, 0, 350, 300)).resize((224, 224), Image.Resampling.BILINEAR)
    assert out.size == (224, 224) and out.mode == "RGB"
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    # Level 0 draws nothing: the result does not depend on the generator.
    assert np.array_equal(np.asarray(out), np.asarray(A.augment(src, 0, np.random.default_rng(99))))


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_deterministic_under_seed_and_size(level: int) -> None:
    src = _gradient()
    a = A.augment(src, level, np.random.default_rng(7))
    b = A.augment(Image.fromarray(src), level, np.random.default_rng(7))
    assert a.size == (224, 224) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_rotation_and_crop_scale_stay_in_range() -> None:
    rng = np.random.default_rng(3)
    angles, scales = [], []
    h, w = 300, 400
    for _ in range(300):
        _, p = A.augment_with_params(np.zeros((h, w, 3), np.uint8), 1, rng)
        top, left, ch, cw = p.crop
        assert ch == cw, "ratio is 1:1"
        assert top >= 0 and top + ch <= h and left >= 0 and left + cw <= w
        angles.append(p.angle)
        scales.append(ch * cw / (h * w))
    assert max(abs(a) for a in angles) <= 20.0
    assert min(angles) < -15 and max(angles) > 15  # the full range is used
    # area scale within [0.2, 1.0] (+ rounding); a 1:1 crop of a 4:3 image cannot exceed 0.75.
    assert min(scales) >= 0.2 - 0.01 and max(scales) <= 0.75 + 1e-9
    assert min(scales) < 0.25


def test_crop_params_follow_torchvision_fallback() -> None:
    # A very wide image: square crops of scale > h/w fail and fall back to a centre square.
    rng = np.random.default_rng(0)
    for _ in range(50):
        _, left, h, w = A.random_resized_crop_params(10, 1000, rng)
        assert h == w <= 10 and 0 <= left <= 1000 - w


def test_rotation_fills_black() -> None:
    white = np.full((224, 224, 3), 255, np.uint8)
    rng = np.random.default_rng(11)
    black_seen = 0
    for _ in range(40):
        img, p = A.augment_with_params(white, 1, rng)
        arr = np.asarray(img)
        if (arr.max(axis=2) == 0).any():
            black_seen += 1
        if abs(p.angle) < 0.5:
            continue
        # The rotated corners are black; a full-frame crop must show them.
        if p.crop[2] == 224:
            assert (arr.max(axis=2) == 0).any()
    assert black_seen > 0


def test_flips_really_flip_and_reference_bug_switch() -> None:
    quads = _quadrants()
    rng = np.random.default_rng(5)
    seen = set()
    for _ in range(64):
        _, p = A.augment_with_params(quads, 1, rng)
        seen.add((p.hflip, p.vflip))
    assert seen == {(False, False), (True, False), (False, True), (True, True)}

    # Apply the drawn params by hand: a horizontal flip mirrors the unflipped output.
    seed = next(s for s in range(200) if A.augment_with_params(quads, 1, np.random.default_rng(s))[1].hflip)
    flipped, p = A.augment_with_params(quads, 1, np.random.default_rng(seed))
    plain, p_bug = A.augment_with_params(quads, 1, np.random.default_rng(seed), reference_flip_bug=True)
    assert not p_bug.hflip and not p_bug.vflip
    assert p_bug.angle == p.angle and p_bug.crop == p.crop
    expect = np.asarray(plain)[:, ::-1]
    if p.vflip:
        expect = expect[::-1]
    assert np.array_equal(np.asarray(flipped), expect)
    # With the reference bug no flip ever fires.
    rng = np.random.default_rng(6)
    for _ in range(32):
        _, pb = A.augment_with_params(quads, 1, rng, reference_flip_bug=True)
        assert not pb.hflip and not pb.vflip


def test_distortion_levels_drawn_in_range() -> None:
    rng = np.random.default_rng(2)
    src = _gradient()
    seen2: dict[str, set[int]] = {}
    seen3: dict[str, set[int]] = {}
    for _ in range(60):
        _, p2 = A.augment_with_params(src, 2, rng)
        _, p3 = A.augment_with_params(src, 3, rng)
        for k, v in p2.distortions.items():
            seen2.setdefault(k, set()).add(v)
        for k, v in p3.distortions.items():
            seen3.setdefault(k, set()).add(v)
    assert seen2 == {"CS": {0, 1}, "CC": {0, 1}, "JPEG": {0, 1}}
    assert seen3 == {k: {0, 1, 2} for k in ("CS", "CC", "JPEG", "GNC", "GB")}
    _, p1 = A.augment_with_params(src, 1, rng)
    assert p1.distortions == {}


def test_saturation_factor_scales_chroma() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(40, 216, (64, 64, 3), dtype=np.uint8)
    y0 = _luma(img)
    chroma0 = img.astype(np.float64) - y0[..., None]
    for factor in A.DISTORTION_PARAMS["CS"]:
        out = A.color_saturation(img, factor)
        y = _luma(out)
        assert np.abs(y - y0).mean() < 1.0  # luma kept (up to truncation)
        chroma = out.astype(np.float64) - y[..., None]
        ratio = np.abs(chroma).sum() / np.abs(chroma0).sum()
        assert ratio == pytest.approx(factor, abs=0.02)
    grey = A.color_saturation(img, 0.0)
    assert (grey.max(axis=2).astype(int) - grey.min(axis=2)).max() <= 1


def test_contrast_multiplier_truncates() -> None:
    img = np.full((8, 8, 3), 200, np.uint8)
    for factor in A.DISTORTION_PARAMS["CC"]:
        assert np.all(A.color_contrast(img, factor) == int(200 * factor))


def test_jpeg_distortion_is_down_up_resize() -> None:
    img = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    rough = np.abs(np.diff(img.astype(int), axis=1)).mean()
    for factor in A.DISTORTION_PARAMS["JPEG"]:
        out = A.jpeg_downup(img, factor)
        assert out.shape == img.shape
        expect = A.resize_linear(A.resize_linear(img, 224 // factor, 224 // factor), 224, 224)
        assert np.array_equal(out, expect)
        assert np.abs(np.diff(out.astype(int), axis=1)).mean() < rough / 2  # detail is lost
    flat = np.full((224, 224, 3), 77, np.uint8)
    assert np.array_equal(A.jpeg_downup(flat, 4), flat)


def test_blur_kernel_and_sigma() -> None:
    for ksize in A.DISTORTION_PARAMS["GB"]:
        k = A.gaussian_kernel(int(ksize), ksize / 6)
        assert k.shape == (ksize,) and k.sum() == pytest.approx(1.0)
        # sigma = k/6: the edge tap sits (k-1)/2 = almost 3 sigma from the centre.
        sigma = ksize / 6
        assert k[0] / k[ksize // 2] == pytest.approx(np.exp(-(((ksize - 1) / 2) ** 2) / (2 * sigma**2)))
        assert k[0] / k[ksize // 2] < np.exp(-3.0)
    # An impulse spreads into exactly the kernel's footprint.
    img = np.zeros((64, 64, 3), np.uint8)
    img[32, 32] = 255
    for ksize in (7, 13, 21):
        out = A.gaussian_blur(img, ksize)
        ys, xs = np.nonzero(out[..., 0])
        assert ys.max() - ys.min() + 1 <= ksize and xs.max() - xs.min() + 1 <= ksize
        assert out[32, 32, 0] < 255
        # the blurred impulse keeps its mass
        assert out[..., 0].astype(float).sum() == pytest.approx(255, rel=0.2)
    flat = np.full((32, 32, 3), 90, np.uint8)
    assert np.array_equal(A.gaussian_blur(flat, 21), flat)


@pytest.mark.parametrize("dlevel", [1, 2, 3])
def test_noise_variance_on_flat_image(dlevel: int) -> None:
    var = A.distortion_param("GNC", dlevel)
    flat = np.full((256, 256, 3), 128, np.uint8)
    out = A.gaussian_noise_color(flat, var, np.random.default_rng(dlevel))
    # Y carries the noise scaled from the studio-range [0,1] YCbCr back to pixel units.
    y_std = _luma(out).std()
    expected = np.sqrt(var) * 255.0 * 255.0 / 219.0
    assert y_std == pytest.approx(expected, rel=0.12)
    assert abs(_luma(out).mean() - 128) < 1.5  # zero-mean (up to truncation)


def test_challenge_jpeg_is_224_q75() -> None:
    data = A.challenge_jpeg(_gradient(), 3, np.random.default_rng(0))
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and img.size == (224, 224) and img.mode == "RGB"
    # PIL's default quality (75) gives the same bytes.
    aug = A.augment(_gradient(), 3, np.random.default_rng(0))
    buf = io.BytesIO()
    aug.save(buf, format="JPEG")
    assert buf.getvalue() == data


def test_random_level_uniform() -> None:
    rng = np.random.default_rng(0)
    counts = np.bincount([A.random_level(rng) for _ in range(4000)], minlength=4)
    assert counts.shape == (4,) and counts.min() > 900


def test_bad_level_rejected() -> None:
    with pytest.raises(ValueError):
        A.augment(_gradient(), 4, np.random.default_rng(0))
