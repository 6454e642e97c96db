"""Pillow's bilinear resize, reproduced for tensors, so every engine feeds a model the same pixels.

The classifiers were trained on images resized by Pillow (``Image.resize(..., BILINEAR)``), and the
torch tier still resizes that way. The fast engines decode on the GPU (nvJPEG) and must resize there; a
float bilinear resize (``F.interpolate``, even with ``antialias``) differs from Pillow by one grey level on
about a fifth of the pixels, which moves EfficientNet-Lite2's answer by up to 0.02 on real photos (the
model was fine-tuned on JPEG-q75 224 px challenges upscaled to 260 px). This module computes Pillow's
integer filter taps (triangle filter, support scaled on reduction, 22-bit fixed point) and applies them in
two separable passes with Pillow's rounding and clipping after each pass.

Pillow runs the horizontal pass first for resizes that scale both axes alike (every square-to-square
resize, which is what challenges are: 224x224) and the result is bit-exact there
(``tests/unit/models/test_placement.py``). For inputs whose two axes scale very differently Pillow may choose the
vertical pass first; then a few pixels can differ by one grey level. CPU paths call Pillow itself.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images


@lru_cache(maxsize=128)
def pil_bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(index, weight)`` arrays ``[out_size, ksize]`` of Pillow's bilinear filter along one axis:
    output ``o`` = sum over ``k`` of ``input[index[o, k]] * weight[o, k]`` (integer weights scaled by
    2**22; unused taps have weight 0)."""
    if in_size < 1 or out_size < 1:
        raise ValueError("sizes must be positive")
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # bilinear's support is 1
    ksize = math.ceil(support) * 2 + 1
    inv = 1.0 / filterscale
    index = np.zeros((out_size, ksize), dtype=np.int64)
    weight = np.zeros((out_size, ksize), dtype=np.int64)
    for o in range(out_size):
        center = (o + 0.5) * scale
        xmin = max(0, int(center - support + 0.5))
        xmax = min(in_size, int(center + support + 0.5))
        ks = []
        for x in range(xmax - xmin):
            t = abs((x + xmin - center + 0.5) * inv)
            ks.append(1.0 - t if t < 1.0 else 0.0)
        total = sum(ks)
        index[o, :] = xmin
        for x, k in enumerate(ks):
            k = k / total if total != 0.0 else k
            weight[o, x] = int(-0.5 + k * (1 << PRECISION_BITS)) if k < 0 else int(0.5 + k * (1 << PRECISION_BITS))
            index[o, x] = xmin + x
    return index, weight


@lru_cache(maxsize=128)
def _dense_taps(in_size: int, out_size: int) -> np.ndarray:
    """The taps as a dense ``[in_size, out_size]`` float64 matrix (zeros off the filter's support)."""
    index, weight = pil_bilinear_taps(in_size, out_size)
    dense = np.zeros((in_size, out_size), dtype=np.float64)
    for o in range(out_size):
        for i, w in zip(index[o], weight[o], strict=True):
            if w:
                dense[i, o] += float(w)
    return dense


def _pass(x: Any, dim: int, out_size: int) -> Any:
    """One separable pass as a float64 matrix product: pixel x weight products stay below 2**30 and their
    sums below 2**31, so the products and sums are exact, as in Pillow's int32 arithmetic."""
    import torch

    w = torch.from_numpy(_dense_taps(int(x.shape[dim]), out_size)).to(x.device)
    s = x @ w if dim == 3 else (x.transpose(2, 3) @ w).transpose(2, 3)
    return torch.clamp(torch.floor((s + float(1 << (PRECISION_BITS - 1))) / float(1 << PRECISION_BITS)), 0, 255)


def resize_nchw_uint8(x: Any, height: int, width: int) -> Any:
    """NCHW uint8 tensor (any device) -> NCHW uint8 of ``height`` x ``width``, Pillow's bilinear resize."""
    import torch

    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError("expected an NCHW uint8 tensor")
    y = x.to(torch.float64)
    if y.shape[3] != width:
        y = _pass(y, 3, width)
    if y.shape[2] != height:
        y = _pass(y, 2, height)
    return y.to(torch.uint8)


def resize_hwc_uint8(img: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 -> size x size x 3 through Pillow itself (the CPU engines' path)."""
    from PIL import Image

    if img.shape[0] == size and img.shape[1] == size:
        return np.require(img, np.uint8, ["C", "W"])
    return np.array(Image.fromarray(np.ascontiguousarray(img)).resize((size, size), Image.BILINEAR))
