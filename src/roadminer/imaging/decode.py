"""base64 -> image bytes -> RGB array, with limits checked before any large allocation."""

from __future__ import annotations

import binascii
import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pybase64
from PIL import Image, ImageOps, UnidentifiedImageError


class ImageDecodeError(ValueError):
    """The payload is not an acceptable image; the message is safe to return to the caller."""


@dataclass(frozen=True)
class ImagePolicy:
    max_encoded_bytes: int = 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_side: int = 8192
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP")
    # Decoded images with a longer side are shrunk to it (None: keep full size). Bounds the memory that
    # queued requests hold: a small PNG/JPEG may legally decode to max_pixels (48 MB of RGB).
    max_work_side: int | None = None

    @classmethod
    def from_config(cls, cfg) -> ImagePolicy:  # cfg: roadminer.core.config.ImageLimits
        return cls(
            cfg.max_encoded_bytes,
            cfg.max_pixels,
            cfg.max_side,
            tuple(f.upper() for f in cfg.formats),
            getattr(cfg, "max_work_side", None),
        )


def b64decode_image(data: str, policy: ImagePolicy) -> bytes:
    if not isinstance(data, str):
        raise ImageDecodeError("image must be a base64 string")
    # 4 base64 chars carry 3 bytes; refuse before decoding anything oversized.
    if len(data) > (policy.max_encoded_bytes * 4) // 3 + 8:
        raise ImageDecodeError(f"image exceeds {policy.max_encoded_bytes} encoded bytes")
    try:
        raw = pybase64.b64decode(data, validate=True)  # SIMD; same strict alphabet as the stdlib
    except (binascii.Error, ValueError) as e:
        raise ImageDecodeError(f"image is not valid base64: {e}") from None
    if not raw:
        raise ImageDecodeError("image is empty")
    return raw


def decode_rgb(raw: bytes, policy: ImagePolicy) -> np.ndarray:
    """Decode image bytes into an HxWx3 uint8 RGB array (EXIF orientation applied).

    Only the policy's format plugins are tried; size limits are checked from the header before any
    pixel is decoded. Every failure is an ``ImageDecodeError`` (whatever the decoder raised).
    """
    with _decode_errors(policy):
        img, fmt = _open_checked(raw, policy)
        w, h = img.size
        side = policy.max_work_side
        if side and fmt == "JPEG" and max(w, h) > side:
            img.draft("RGB", (max(1, w * side // max(w, h)), max(1, h * side // max(w, h))))
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode != "RGB":
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                bg = Image.new("RGB", img.size, (255, 255, 255))
                rgba = img.convert("RGBA")
                bg.paste(rgba, mask=rgba.split()[-1])
                img = bg
            else:
                img = img.convert("RGB")
        if side and max(img.size) > side:
            img.thumbnail((side, side), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)
    raise AssertionError("unreachable")  # pragma: no cover - _decode_errors re-raises


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int


def probe_image(raw: bytes, policy: ImagePolicy) -> ImageHeader:
    """Check an image's format and size against ``policy`` from its header alone (PIL's lazy open: no
    pixel is decoded). Raises ``ImageDecodeError`` with the same messages as ``decode_rgb``. A payload
    that passes may still fail to decode later (a truncated or corrupt body)."""
    with _decode_errors(policy):
        img, fmt = _open_checked(raw, policy)
        w, h = img.size
        img.close()
        return ImageHeader(fmt, w, h)
    raise AssertionError("unreachable")  # pragma: no cover


def _open_checked(raw: bytes, policy: ImagePolicy) -> tuple[Image.Image, str]:
    """Open lazily with the policy's format plugins only and check the size limits (call inside
    ``_decode_errors``)."""
    if len(raw) > policy.max_encoded_bytes:
        raise ImageDecodeError(f"image exceeds {policy.max_encoded_bytes} encoded bytes")
    Image.init()
    plugins = [f for f in policy.formats if f in Image.OPEN]
    img = Image.open(io.BytesIO(raw), formats=plugins or None)
    fmt = (img.format or "").upper()
    if fmt == "MPO" and "JPEG" in policy.formats:
        fmt = "JPEG"  # multi-picture JPEG (cameras): the first picture is a plain JPEG
    if fmt not in policy.formats:
        raise ImageDecodeError(f"image format {fmt or 'unknown'} not accepted ({', '.join(policy.formats)})")
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageDecodeError("image has zero size")
    if w > policy.max_side or h > policy.max_side or w * h > policy.max_pixels:
        raise ImageDecodeError(f"image {w}x{h} exceeds limits ({policy.max_side} px side, {policy.max_pixels} px)")
    return img, fmt


@contextlib.contextmanager
def _decode_errors(policy: ImagePolicy) -> Iterator[None]:
    """Every failure inside becomes an ``ImageDecodeError`` with a caller-safe message."""
    accepted = ", ".join(policy.formats)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # corrupt EXIF/TIFF tags: decoded anyway
            yield
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(f"image cannot be decoded: not an accepted format ({accepted})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(f"image exceeds limits ({policy.max_pixels} px): decompression bomb") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        raise ImageDecodeError(f"image cannot be decoded: {e}") from None
    except Exception as e:  # decoders raise struct.error, KeyError, IndexError... on crafted files
        raise ImageDecodeError(f"image cannot be decoded: {type(e).__name__}") from None


def encode_jpeg(rgb: np.ndarray | Image.Image, quality: int = 75) -> bytes:
    """Encode as the validator does (PIL JPEG, default quality 75)."""
    img = rgb if isinstance(rgb, Image.Image) else Image.fromarray(np.asarray(rgb, dtype=np.uint8))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def to_b64(raw: bytes) -> str:
    return pybase64.b64encode(raw).decode("ascii")
