"""What a validator sends, as training/eval views: augmentation level 0-3, then 224x224 JPEG q75.

The augmentation is :func:`roadminer.imaging.augment.augment`, shared with the validator and the simulator.
Validators running the reference code never flip (a bug there); ``real_flips`` chooses between that and
real horizontal/vertical flips, and ``hflip`` adds a natural mirror on top of the reference behaviour.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from roadminer.imaging.augment import JPEG_QUALITY, augment
from roadminer.imaging.augment import TARGET_SIZE as SIZE


def augment_view(
    img: Image.Image, level: int, rng: np.random.Generator, real_flips: bool = True, hflip: bool = False
) -> Image.Image:
    """The validator's augmentation at ``level`` (224x224 RGB), without the final JPEG step."""
    out = augment(img, level, rng, reference_flip_bug=not real_flips).convert("RGB")
    if hflip and level > 0 and rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if out.size != (SIZE, SIZE):
        out = out.resize((SIZE, SIZE), Image.BILINEAR)
    return out


def jpeg_roundtrip(img: Image.Image, quality: int = JPEG_QUALITY) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out.convert("RGB")


def validator_view(
    img: Image.Image, level: int, rng: np.random.Generator, real_flips: bool = True, hflip: bool = False
) -> Image.Image:
    """Exactly what the miner receives for this image: augmentation at ``level`` then JPEG q75 at 224."""
    return jpeg_roundtrip(augment_view(img, level, rng, real_flips, hflip))
