"""The OCR sign-text tier on drawn images (RapidOCR's shipped PP-OCRv4 models, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from roadminer.models.ocr import match_phrases, normalise

DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(DEJAVU, size)
    except OSError:
        return ImageFont.load_default(size=size)


def _road(sign_lines: list[str] | None) -> np.ndarray:
    """A 224x224 street scene (sky, road, lane marks); optionally an orange sign with black text."""
    img = Image.new("RGB", (224, 224), (120, 150, 190))
    d = ImageDraw.Draw(img)
    d.polygon([(0, 224), (224, 224), (140, 110), (84, 110)], fill=(70, 70, 72))
    for y in range(120, 224, 24):
        d.rectangle([110, y, 114, y + 10], fill=(230, 230, 230))
    if sign_lines:
        d.rectangle([14, 20, 210, 40 + 34 * len(sign_lines)], fill=(255, 140, 0), outline=(0, 0, 0), width=3)
        f = _font(24)
        for i, line in enumerate(sign_lines):
            w = d.textlength(line, font=f)
            d.text(((224 - w) / 2, 30 + 34 * i), line, fill=(0, 0, 0), font=f)
    return np.asarray(img)


def test_normalise_and_fuzzy_match() -> None:
    assert normalise("r0ad  w0rk!") == "ROAD WORK"
    assert normalise("Straßenarbeiten") == "STRASSENARBEITEN"
    phrase, sim, _ = match_phrases(["R0AD", "WORK", "AHEAD"])
    assert phrase == "ROAD WORK AHEAD" and sim == 1.0
    assert match_phrases(["ROAD WQRK"])[0] in ("ROAD WORK", "ROADWORK")  # one letter misread
    assert match_phrases(["BAUSTELLE"])[0] == "BAUSTELLE"
    assert match_phrases(["SPEED LIMIT 50", "CITY CENTRE"])[0] is None
    assert match_phrases([])[0] is None


@pytest.fixture(scope="module")
def ocr_tier():
    try:
        import rapidocr_onnxruntime  # noqa: F401
    except ImportError as e:
        pytest.skip(f"rapidocr-onnxruntime cannot be imported ({e}); it is in the train extra")
    from roadminer.models.base import build_tier

    return build_tier("ocr", "ocr", {"threads": 1})


def test_ocr_tier_reads_work_zone_sign(ocr_tier) -> None:
    from roadminer.models.base import ImageBatch

    sign = _road(["ROAD WORK", "AHEAD"])
    plain = _road(None)
    other = _road(["CITY CENTRE"])
    out = ocr_tier.predict(ImageBatch(rgb=[sign, plain, other]))
    assert out.prob.shape == (3,)
    assert np.all((out.prob > 0) & (out.prob < 1))
    assert out.prob[0] > 0.8, out.extras
    assert out.prob[1] < 0.5 and out.prob[2] < 0.5, out.extras
    assert out.extras["matched"][0] == "ROAD WORK AHEAD"
    assert "WORK" in " ".join(out.extras["text"][0]).upper()
    assert out.extras["matched"][1] is None and out.extras["matched"][2] is None


def test_ocr_tier_survives_odd_images(ocr_tier) -> None:
    from roadminer.models.base import ImageBatch

    tiny = np.zeros((8, 8, 3), dtype=np.uint8)
    flat = np.full((224, 224, 3), 255, dtype=np.uint8)
    out = ocr_tier.predict(ImageBatch(rgb=[tiny, flat]))
    assert out.prob.tolist() == [pytest.approx(ocr_tier.p_none)] * 2
