"""Validator-parity augmentation: the reference validator's levels 0-3 with its exact parameters.

Shared by the trainer (data loader), the simulator and the validator, so that what a model trains on
is what validators send. Deterministic under a ``numpy.random.Generator``. Pure numpy + Pillow (no
OpenCV): the distortions reproduce OpenCV's arithmetic (float YCrCb with delta 0.5, INTER_LINEAR
resize with half-pixel centres, Gaussian kernels with BORDER_REFLECT_101).

Levels (drawn uniformly from 0..3 by the validator):

- 0: RGB -> centre crop to a square of the shorter side -> resize 224.
- 1: rotation U(-20°, 20°) with black fill -> random resized crop (scale 0.2-1.0, ratio 1:1) -> 224,
  then horizontal and vertical flips with p=0.5 each. The reference's flips never fire (a bug);
  ``reference_flip_bug=True`` reproduces that.
- 2: level 1 + CS, CC, JPEG each at a distortion level drawn from U{0,1}.
- 3: level 1 + CS, CC, JPEG, GNC, GB each at a distortion level drawn from U{0,2}.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from roadminer.imaging.decode import encode_jpeg

TARGET_SIZE = 224
JPEG_QUALITY = 75
ROTATION_DEGREES = 20.0
CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (1.0, 1.0)
FLIP_P = 0.5

# DeeperForensics distortion parameters by distortion level 1..5 (level 0 = skipped).
DISTORTION_PARAMS: dict[str, tuple[float, ...]] = {
    "CS": (0.4, 0.3, 0.2, 0.1, 0.0),  # colour saturation factor (smaller = worse)
    "CC": (0.85, 0.725, 0.6, 0.475, 0.35),  # contrast multiplier (smaller = worse)
    "JPEG": (2, 3, 4, 5, 6),  # down/up resize factor (larger = worse)
    "GNC": (0.001, 0.002, 0.005, 0.01, 0.05),  # Gaussian noise variance in YCbCr (larger = worse)
    "GB": (7, 9, 13, 17, 21),  # Gaussian blur kernel size, sigma = k / 6 (larger = worse)
}
# Distortions applied per augmentation level, in order, with the maximum distortion level drawn.
LEVEL_DISTORTIONS: dict[int, tuple[tuple[str, int], ...]] = {
    0: (),
    1: (),
    2: (("CS", 1), ("CC", 1), ("JPEG", 1)),
    3: (("CS", 2), ("CC", 2), ("JPEG", 2), ("GNC", 2), ("GB", 2)),
}
LEVELS = (0, 1, 2, 3)


@dataclass
class AugmentParams:
    """What was drawn for one augmented image (for logs, per-level statistics and tests)."""

    level: int
    angle: float = 0.0
    crop: tuple[int, int, int, int] | None = None  # (top, left, height, width) in the rotated image
    hflip: bool = False
    vflip: bool = False
    distortions: dict[str, int] = field(default_factory=dict)  # name -> distortion level (0 = skipped)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def random_level(rng: np.random.Generator) -> int:
    """Augmentation level as the validator draws it: uniform over 0..3."""
    return int(rng.integers(0, 4))


def distortion_param(name: str, dlevel: int) -> float:
    """The parameter of distortion ``name`` at distortion level 1..5."""
    if not 1 <= dlevel <= 5:
        raise ValueError(f"distortion level must be in 1..5, got {dlevel}")
    return DISTORTION_PARAMS[name][dlevel - 1]


# --------------------------------------------------------------------------- geometry


def _to_pil_rgb(img: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(img, Image.Image):
        return img if img.mode == "RGB" else img.convert("RGB")
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr[:, :, :3]), "RGB")


def center_crop_square(img: Image.Image) -> Image.Image:
    """Centre crop to a square of the shorter side (torchvision ``CenterCrop`` rounding)."""
    w, h = img.size
    m = min(w, h)
    top = round((h - m) / 2.0)
    left = round((w - m) / 2.0)
    return img.crop((left, top, left + m, top + m))


def random_resized_crop_params(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params``: (top, left, h, w), 10 tries then a centre crop."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = round(w / min(ratio))
    elif in_ratio > max(ratio):
        h = height
        w = round(h * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# --------------------------------------------------------------------------- distortions (uint8 HxWx3 RGB)


def _rgb2ycbcr_ref(img: np.ndarray) -> np.ndarray:
    """The reference's ``rgb2ycbcr``: OpenCV float YCrCb (delta 0.5) mapped by the studio-range formula."""
    x = img.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cr = (r - y) * 0.713 + 0.5
    cb = (b - y) * 0.564 + 0.5
    out = np.empty_like(x)
    out[..., 0] = (y * (235 - 16) + 16) / 255.0
    out[..., 1] = (cb * (240 - 16) + 16) / 255.0
    out[..., 2] = (cr * (240 - 16) + 16) / 255.0
    return out


def _ycbcr2rgb_ref(ycbcr: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_rgb2ycbcr_ref`; float RGB, not clipped."""
    x = ycbcr.astype(np.float32)
    y = (x[..., 0] * 255.0 - 16) / (235 - 16)
    cb = (x[..., 1] * 255.0 - 16) / (240 - 16) - 0.5
    cr = (x[..., 2] * 255.0 - 16) / (240 - 16) - 0.5
    out = np.empty_like(x)
    out[..., 0] = y + 1.403 * cr
    out[..., 1] = y - 0.714 * cr - 0.344 * cb
    out[..., 2] = y + 1.773 * cb
    return out


def color_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """CS: scale the chroma channels around neutral by ``factor``."""
    ycbcr = _rgb2ycbcr_ref(img)
    ycbcr[..., 1:] = 0.5 + (ycbcr[..., 1:] - 0.5) * factor
    return np.clip(_ycbcr2rgb_ref(ycbcr), 0, 255).astype(np.uint8)


def color_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """CC: multiply intensities by ``factor`` (truncating, as the reference does)."""
    return (img.astype(np.float32) * factor).astype(np.uint8)


def _linear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of OpenCV INTER_LINEAR along one axis (half-pixel centres)."""
    scale = n_in / n_out
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    i0 = np.floor(src).astype(np.int64)
    frac = src - i0
    frac[i0 < 0] = 0.0
    i0 = np.clip(i0, 0, n_in - 1)
    i1 = np.clip(i0 + 1, 0, n_in - 1)
    frac[i0 >= n_in - 1] = 0.0
    return i0, i1, frac.astype(np.float32)


def resize_linear(img: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """``cv2.resize(img, (out_w, out_h))`` (INTER_LINEAR, no antialiasing) for uint8 HxWxC."""
    h, w = img.shape[:2]
    y0, y1, fy = _linear_axis(h, out_h)
    x0, x1, fx = _linear_axis(w, out_w)
    x = img.astype(np.float32)
    rows = x[y0] * (1 - fy)[:, None, None] + x[y1] * fy[:, None, None]
    out = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def jpeg_downup(img: np.ndarray, factor: int) -> np.ndarray:
    """JPEG: downscale by ``factor`` then back up (bilinear), as the reference's "JPEG" distortion."""
    h, w = img.shape[:2]
    small = resize_linear(img, max(1, w // int(factor)), max(1, h // int(factor)))
    return resize_linear(small, w, h)


def gaussian_noise_color(img: np.ndarray, variance: float, rng: np.random.Generator) -> np.ndarray:
    """GNC: add N(0, variance) to each channel of the reference's [0,1]-scaled YCbCr."""
    ycbcr = _rgb2ycbcr_ref(img) / 255.0
    noisy = (ycbcr + math.sqrt(variance) * rng.standard_normal(ycbcr.shape, dtype=np.float32)) * 255.0
    return np.clip(_ycbcr2rgb_ref(noisy), 0, 255).astype(np.uint8)


def gaussian_kernel(ksize: int, sigma: float) -> np.ndarray:
    """``cv2.getGaussianKernel(ksize, sigma)`` for sigma > 0."""
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2.0
    k = np.exp(-(x**2) / (2.0 * sigma**2))
    return k / k.sum()


def gaussian_blur(img: np.ndarray, ksize: int, sigma: float | None = None) -> np.ndarray:
    """GB: ``cv2.GaussianBlur(img, (k, k), k / 6)`` with BORDER_REFLECT_101."""
    sigma = ksize / 6.0 if sigma is None else sigma
    k = gaussian_kernel(ksize, sigma).astype(np.float32)
    r = ksize // 2
    h, w = img.shape[:2]
    x = img.astype(np.float32)
    if r >= h or r >= w:  # reflect padding needs a border smaller than the image
        x = np.pad(x, ((r, r), (r, r), (0, 0)), mode="symmetric")
    else:
        x = np.pad(x, ((r, r), (r, r), (0, 0)), mode="reflect")
    tmp = np.zeros((h + 2 * r, w, x.shape[2]), dtype=np.float32)
    for i in range(ksize):
        tmp += k[i] * x[:, i : i + w]
    out = np.zeros((h, w, x.shape[2]), dtype=np.float32)
    for i in range(ksize):
        out += k[i] * tmp[i : i + h]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def apply_distortion(img: np.ndarray, name: str, dlevel: int, rng: np.random.Generator) -> np.ndarray:
    """Apply distortion ``name`` at distortion level ``dlevel`` (0 = unchanged)."""
    if dlevel == 0:
        return img
    p = distortion_param(name, dlevel)
    if name == "CS":
        return color_saturation(img, p)
    if name == "CC":
        return color_contrast(img, p)
    if name == "JPEG":
        return jpeg_downup(img, int(p))
    if name == "GNC":
        return gaussian_noise_color(img, p, rng)
    if name == "GB":
        return gaussian_blur(img, int(p))
    raise KeyError(f"unknown distortion {name!r}")


# --------------------------------------------------------------------------- pipeline


def augment_with_params(
    img: Image.Image | np.ndarray,
    level: int,
    rng: np.random.Generator,
    *,
    reference_flip_bug: bool = False,
    size: int = TARGET_SIZE,
) -> tuple[Image.Image, AugmentParams]:
    """Augment one image at ``level`` (0..3); returns the ``size``x``size`` RGB image and what was drawn."""
    if level not in LEVELS:
        raise ValueError(f"augmentation level must be one of {LEVELS}, got {level!r}")
    pil = _to_pil_rgb(img)
    params = AugmentParams(level=level)
    if level == 0:
        out = center_crop_square(pil).resize((size, size), Image.Resampling.BILINEAR)
        return out, params

    angle = float(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES))
    rotated = pil.rotate(angle, resample=Image.Resampling.NEAREST, expand=False, fillcolor=(0, 0, 0))
    top, left, h, w = random_resized_crop_params(rotated.height, rotated.width, rng)
    out = rotated.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    # Both coins are drawn even with the reference bug so that the rest of the stream stays aligned.
    hflip = bool(rng.random() < FLIP_P)
    vflip = bool(rng.random() < FLIP_P)
    if reference_flip_bug:
        hflip = vflip = False
    params.angle, params.crop, params.hflip, params.vflip = angle, (top, left, h, w), hflip, vflip
    if hflip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if vflip:
        out = out.transpose(Image.Transpose.FLIP_TOP_BOTTOM)

    if LEVEL_DISTORTIONS[level]:
        arr = photometric(np.asarray(out, dtype=np.uint8), level, rng, params.distortions)
        out = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    return out, params


def photometric(
    arr: np.ndarray, level: int, rng: np.random.Generator, drawn: dict[str, int] | None = None
) -> np.ndarray:
    """The distortions of augmentation ``level`` alone (no geometry), each at a level drawn up to its
    maximum, in the validator's order; ``drawn`` receives what was drawn. Boxes stay valid."""
    for name, max_level in LEVEL_DISTORTIONS[level]:
        dlevel = int(rng.integers(0, max_level + 1))
        if drawn is not None:
            drawn[name] = dlevel
        arr = apply_distortion(arr, name, dlevel, rng)
    return arr


def augment(
    img: Image.Image | np.ndarray,
    level: int,
    rng: np.random.Generator,
    *,
    reference_flip_bug: bool = False,
) -> Image.Image:
    """Augment one image at ``level`` (0..3) exactly as the validator does; 224x224 RGB."""
    return augment_with_params(img, level, rng, reference_flip_bug=reference_flip_bug)[0]


def challenge_jpeg(
    img: Image.Image | np.ndarray,
    level: int,
    rng: np.random.Generator,
    *,
    reference_flip_bug: bool = False,
    quality: int = JPEG_QUALITY,
) -> bytes:
    """The bytes a validator sends: augmented at ``level``, 224x224, JPEG quality 75."""
    return encode_jpeg(augment(img, level, rng, reference_flip_bug=reference_flip_bug), quality)
