"""Property-based fuzzing of the image decoder (hypothesis): whatever the bytes, ``decode_rgb`` returns an
HxWx3 uint8 array inside the limits or raises ``ImageDecodeError`` (never another exception), and
``b64decode_image`` accepts exactly strict base64."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from roadminer.imaging.decode import ImageDecodeError, ImagePolicy, b64decode_image, decode_rgb
from testkit.hardening import FUZZ_COUNTS, fuzz_settings
from testkit.strategies import MAGICS, images, mutated

POLICY = ImagePolicy(max_encoded_bytes=256 * 1024, max_pixels=2048 * 2048, max_side=4096, max_work_side=512)


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    start = FUZZ_COUNTS.copy()
    yield
    print(f"\n[fuzz decode] examples: {dict(FUZZ_COUNTS - start)}")


def _decode_or_refuse(raw: bytes, policy: ImagePolicy = POLICY) -> np.ndarray | None:
    try:
        arr = decode_rgb(raw, policy)
    except ImageDecodeError as e:
        assert str(e)  # a message the caller can read
        return None
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    h, w = arr.shape[:2]
    assert h >= 1 and w >= 1 and h * w <= policy.max_pixels
    if policy.max_work_side:
        assert max(h, w) <= policy.max_work_side
    return arr


@fuzz_settings(150)
@given(images())
def test_generated_images_decode_to_rgb(case: tuple[bytes, str, tuple[int, int]]) -> None:
    raw, fmt, (w, h) = case
    FUZZ_COUNTS["generated image"] += 1
    arr = _decode_or_refuse(raw)
    if fmt in POLICY.formats:
        assert arr is not None, f"a valid {fmt} was refused"
        assert arr.shape[:2] == (h, w)
    else:
        assert arr is None  # GIF and TIFF are not accepted


@fuzz_settings(300)
@given(mutated())
def test_mutated_images_never_raise_anything_else(raw: bytes) -> None:
    FUZZ_COUNTS["mutated image"] += 1
    _decode_or_refuse(raw)


@fuzz_settings(200)
@given(
    st.one_of(
        st.binary(max_size=4096),
        st.sampled_from(MAGICS).flatmap(lambda magic: st.binary(max_size=2048).map(lambda tail: magic + tail)),
    )
)
def test_random_bytes_are_refused_cleanly(raw: bytes) -> None:
    FUZZ_COUNTS["random bytes"] += 1
    _decode_or_refuse(raw)


@fuzz_settings(300)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode())))
def test_b64_accepts_exactly_strict_base64(text: str) -> None:
    FUZZ_COUNTS["base64 text"] += 1
    try:
        raw = b64decode_image(text, POLICY)
    except ImageDecodeError as e:
        assert str(e)
        return
    assert raw and base64.b64encode(raw).decode() == text  # canonical encodings only


def test_work_side_bounds_memory_of_large_images() -> None:
    """A 4000x4000 image (allowed) is shrunk to the work side right after decoding."""
    policy = ImagePolicy(max_work_side=1024)
    for fmt in ("JPEG", "PNG"):
        buf = io.BytesIO()
        Image.new("RGB", (4000, 2000), (200, 10, 10)).save(buf, format=fmt)
        arr = decode_rgb(buf.getvalue(), policy)
        assert arr.shape == (512, 1024, 3) and [int(v) for v in arr[0, 0]] == pytest.approx([200, 10, 10], abs=3)
    with pytest.raises(ImageDecodeError, match="exceeds"):
        decode_rgb(buf.getvalue(), ImagePolicy(max_pixels=1000 * 1000))
