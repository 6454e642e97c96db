"""Hypothesis strategies shared by the fuzz tests: images in every mode and format (and mutated bytes
of them), the header names of both protocols, and arbitrary JSON values."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import strategies as st
from PIL import Image

from roadminer.protocol import sn72

MODES = ["RGB", "RGBA", "L", "LA", "P", "1", "CMYK", "I;16", "I", "F", "YCbCr"]
FORMATS = ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"]
MAGICS = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"BM", b"GIF89a"]

D, A = sn72.DENDRITE_PREFIX, sn72.AXON_PREFIX
SN72_NAMES = [
    "timeout", "name", "header_size", "total_size", "computed_body_hash",
    *(D + f for f in ("hotkey", "nonce", "uuid", "signature", "version", "ip", "port", "status_code")),
    *(A + f for f in ("hotkey", "ip", "port", "version", "process_time", "status_code")),
    "x-other", "bt_header_input_obj_image",
]  # fmt: skip
BTAUTH_NAMES = [
    "X-Bittensor-Version", "X-Bittensor-Hotkey", "X-Bittensor-Nonce", "X-Bittensor-Signature",
    "X-Bittensor-Receiver", "X-Bittensor-Crypto",
]  # fmt: skip


def _encode(img: Image.Image, fmt: str) -> bytes | None:
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        return None  # PIL cannot write this mode in this format
    return buf.getvalue()


@st.composite
def images(draw: st.DrawFn) -> tuple[bytes, str, tuple[int, int]]:
    w = draw(st.integers(1, 96))
    h = draw(st.integers(1, 96))
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(FORMATS))
    seed = draw(st.integers(0, 2**16))
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    try:
        img = img.convert(mode)
    except ValueError:
        img = img.convert("L").convert(mode)
    raw = _encode(img, fmt)
    if raw is None:
        raw = _encode(img.convert("RGB"), fmt)
        mode = "RGB"
    assert raw is not None
    orientation = draw(st.sampled_from([None, 1, 3, 6, 8, 0, 9, 65535]))
    if orientation is not None and fmt == "JPEG" and img.mode in ("RGB", "L", "CMYK"):
        exif = Image.Exif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        img.save(buf, format="JPEG", exif=exif.tobytes())
        raw = buf.getvalue()
        if orientation in (6, 8):
            w, h = h, w
    return raw, fmt, (w, h)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw, _, _ = draw(images())
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice_header"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        else:  # overwrite 4 bytes in the header area: sizes, bit depths, chunk lengths
            p = draw(st.integers(0, min(len(data) - 1, 64)))
            data[p : p + 4] = draw(st.binary(min_size=4, max_size=4))
    return bytes(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
