"""Copy-paste synthesis (Ghiasi et al., CVPR 2021) with boxes only: cut boxed cones and work signs out of
training photos and paste them, scaled and shaded to fit, into negative road scenes, which then count as
roadwork. The aim is a model that recognises the objects in any scene rather than the style of the photos
that happen to hold them.

Without instance masks, each cut-out gets a feathered elliptical alpha so that box corners (background)
fade out; its brightness is moved half-way to that of the spot it lands on (its own contrast is kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from loguru import logger
from PIL import Image, ImageFilter

from roadminer.training.data import Sample

PASTE_CLASSES = (0, 2)  # cone, sign (classes.txt); "other" (vehicles, people) is not a roadwork cue alone


@dataclass
class Cutout:
    rgb: np.ndarray  # h x w x 3 uint8
    cls: int
    rel_h: float  # height relative to its source image


def _feather_mask(w: int, h: int, soft: float = 0.18) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    d = ((xx + 0.5 - w / 2) / (w / 2)) ** 2 + ((yy + 0.5 - h / 2) / (h / 2)) ** 2
    a = np.clip((1.0 - d) / soft, 0, 1) if soft > 0 else (d <= 1).astype(np.float64)
    return Image.fromarray((a * 255).astype(np.uint8), "L")


def _object_mask(rgb: np.ndarray, ellipse: Image.Image) -> Image.Image:
    """Alpha = ellipse x "differs from the box border colour" (the border is mostly background)."""
    a = rgb.astype(np.float32)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    dist = np.linalg.norm(a - np.median(border, axis=0), axis=-1)
    fg = np.clip((dist - 25.0) / 35.0, 0, 1)
    alpha = fg * (np.asarray(ellipse, dtype=np.float32) / 255.0)
    m = Image.fromarray((alpha * 255).astype(np.uint8), "L")
    return m.filter(ImageFilter.GaussianBlur(0.8 if min(rgb.shape[:2]) > 16 else 0.4))


class ObjectBank:
    """Cut-outs of boxed objects from labelled samples (only those given: keep held-out data out)."""

    def __init__(self, cutouts: list[Cutout]) -> None:
        self.cutouts = cutouts

    def __len__(self) -> int:
        return len(self.cutouts)

    @classmethod
    def from_samples(
        cls,
        samples: Sequence[Sample],
        classes: Sequence[int] = PASTE_CLASSES,
        min_px: int = 10,
        margin: float = 0.08,
        max_per_image: int = 4,
    ) -> ObjectBank:
        cutouts: list[Cutout] = []
        for s in samples:
            boxes = [b for b in s.boxes if b.cls in classes]
            if not boxes or s.label != 1:
                continue
            try:
                img = s.read_pil()
            except OSError as e:
                logger.warning("copy-paste: cannot read {}: {}", s.name, e)
                continue
            w, h = img.size
            for b in boxes[:max_per_image]:
                bw, bh = b.w * w * (1 + 2 * margin), b.h * h * (1 + 2 * margin)
                if bw < min_px or bh < min_px:
                    continue
                x0, y0 = max(0, int(b.cx * w - bw / 2)), max(0, int(b.cy * h - bh / 2))
                x1, y1 = min(w, int(b.cx * w + bw / 2)), min(h, int(b.cy * h + bh / 2))
                if x1 - x0 < min_px or y1 - y0 < min_px:
                    continue
                cutouts.append(Cutout(np.asarray(img.crop((x0, y0, x1, y1))), b.cls, (y1 - y0) / h))
        return cls(cutouts)

    def paste(self, img: Image.Image, rng: np.random.Generator, max_objects: int = 4) -> Image.Image:
        """Paste 1..max_objects cut-outs into the lower two thirds of ``img`` (a road scene)."""
        if not self.cutouts:
            return img
        out = img.convert("RGB").copy()
        w, h = out.size
        n = int(rng.integers(1, max_objects + 1))
        # Objects of one scene shrink towards a common horizon, as cones along a lane do.
        horizon = rng.uniform(0.35, 0.55) * h
        base_x = rng.uniform(0.15, 0.85) * w
        for k in range(n):
            c = self.cutouts[int(rng.integers(len(self.cutouts)))]
            y_foot = rng.uniform(horizon + 0.08 * h, h * 0.98)
            depth = (y_foot - horizon) / (h - horizon)  # 0 at the horizon, 1 at the bottom
            target_h = max(8.0, h * rng.uniform(0.05, 0.35) * (0.3 + depth))
            scale = target_h / c.rgb.shape[0]
            tw, th = max(4, int(c.rgb.shape[1] * scale)), max(4, int(target_h))
            if th >= h or tw >= w:
                continue
            x = base_x + (k - n / 2) * rng.uniform(0.05, 0.2) * w * (0.3 + depth) + rng.normal(0, 0.05 * w)
            x0 = int(np.clip(x - tw / 2, 0, w - tw))
            y0 = int(np.clip(y_foot - th, 0, h - th))
            piece = Image.fromarray(c.rgb).resize((tw, th), Image.BILINEAR)
            if rng.random() < 0.5:
                piece = piece.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            bg = np.asarray(out.crop((x0, y0, x0 + tw, y0 + th)), dtype=np.float32)
            arr = np.asarray(piece, dtype=np.float32)
            # Shade towards the spot's brightness (half-way: keep the object's own contrast).
            gain = np.clip((bg.mean() + 1) / (arr.mean() + 1), 0.4, 2.5) ** 0.5
            arr = np.clip(arr * gain, 0, 255).astype(np.uint8)
            mask = _object_mask(np.asarray(piece), _feather_mask(tw, th))
            out.paste(Image.fromarray(arr), (x0, y0), mask)
        return out


def bottom_strip(img: Image.Image, frac: float) -> Image.Image:
    """The bottom ``frac`` of ``img``'s height (at least one row), RGB: a vehicle camera's bonnet and dashboard edge."""
    w, h = img.size
    return img.convert("RGB").crop((0, h - max(1, round(h * frac)), w, h))


def paste_strip(img: Image.Image, strip: Image.Image, frac: float) -> Image.Image:
    """``img`` with its bottom ``frac`` of height replaced by ``strip``, stretched to ``img``'s width."""
    out = img.convert("RGB").copy()
    w, h = out.size
    sh = max(1, round(h * frac))
    out.paste(strip.resize((w, sh), Image.BILINEAR), (0, h - sh))
    return out


def paste_bottom_strip(img: Image.Image, donor: Image.Image, frac: float) -> Image.Image:
    """``img`` with its bottom ``frac`` of height replaced by the bottom ``frac`` of ``donor``, stretched to
    ``img``'s width: a vehicle camera's own bonnet and dashboard edge, carried onto another scene."""
    return paste_strip(img, bottom_strip(donor, frac), frac)


def orange_share(img: Image.Image) -> float:
    """Share of work-zone orange pixels (``models.colour.orange_mask``) in ``img``."""
    from roadminer.models.colour import orange_mask

    return float(orange_mask(np.asarray(img.convert("HSV"), dtype=np.int16)).mean())


def bottom_strip_orange(donor: Image.Image, frac: float) -> float:
    """Share of work-zone orange pixels in the bottom ``frac`` of ``donor``: a strip that shows a cone is no
    bonnet-only negative."""
    return orange_share(bottom_strip(donor, frac))
