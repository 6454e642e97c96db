"""Sign-text tier (kind ``ocr``): reads text with RapidOCR (PP-OCRv4 ONNX models shipped in the
``rapidocr-onnxruntime`` wheel, no download) and looks for work-zone words ("ROAD WORK AHEAD", "DETOUR",
"BAUSTELLE", ...), fuzzily, so that OCR slips like "R0AD WORK" still count.

Text is weak evidence either way: no text gives ``p_none`` (below 0.5); a strong phrase read clearly gives
up to ``p_max``. The recognised text and the matched phrase are in ``TierOutput.extras``.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from typing import Any

import numpy as np
from PIL import Image

from roadminer.models.base import ImageBatch, Tier, TierOutput, clip_prob, register_tier

# phrase -> weight (1.0: work zone for sure; lower: words also seen elsewhere)
WORK_ZONE_PHRASES: dict[str, float] = {
    "ROAD WORK": 1.0,
    "ROAD WORKS": 1.0,
    "ROADWORK": 1.0,
    "ROADWORKS": 1.0,
    "ROAD WORK AHEAD": 1.0,
    "WORKERS AHEAD": 1.0,
    "WORK ZONE": 1.0,
    "WORKZONE": 1.0,
    "MEN AT WORK": 1.0,
    "MEN WORKING": 1.0,
    "ROAD CLOSED": 1.0,
    "LANE CLOSED": 1.0,
    "LANE ENDS": 0.6,
    "RIGHT LANE CLOSED": 1.0,
    "LEFT LANE CLOSED": 1.0,
    "CONSTRUCTION": 0.9,
    "UNDER CONSTRUCTION": 1.0,
    "DETOUR": 0.9,
    "DIVERSION": 0.8,
    "BE PREPARED TO STOP": 0.9,
    "PREPARE TO STOP": 0.9,
    "FLAGGER AHEAD": 1.0,
    "ONE LANE ROAD": 0.9,
    "SHOULDER CLOSED": 1.0,
    "UTILITY WORK": 1.0,
    "WORKERS": 0.7,
    "FINES DOUBLE": 0.7,
    "BAUSTELLE": 1.0,
    "STRASSENARBEITEN": 1.0,
    "UMLEITUNG": 0.9,
    "GESPERRT": 0.7,
    "TRAVAUX": 1.0,
    "DEVIATION": 0.7,
    "OBRAS": 0.9,
    "LAVORI IN CORSO": 1.0,
    "WERK IN UITVOERING": 1.0,
}

_CLEAN = re.compile(r"[^A-Z0-9 ]+")
_DIGIT_FIX = str.maketrans({"0": "O", "1": "I", "5": "S", "8": "B"})


def normalise(text: str) -> str:
    """Upper case, umlauts folded, OCR digit slips in words fixed, punctuation dropped."""
    t = text.upper().replace("Ä", "AE").replace("Ö", "OE").replace("Ü", "UE").replace("ß", "SS")
    words = []
    for w in _CLEAN.sub(" ", t).split():
        if any(c.isalpha() for c in w):
            w = w.translate(_DIGIT_FIX)
        words.append(w)
    return " ".join(words)


def match_phrases(
    lines: list[str], phrases: dict[str, float] | None = None, min_similarity: float = 0.8
) -> tuple[str | None, float, float]:
    """Best ``(phrase, similarity, weight*similarity)`` over word windows of the text (lines joined too,
    since a sign's words often come back as separate lines)."""
    phrases = phrases or WORK_ZONE_PHRASES
    texts = [normalise(x) for x in lines if x.strip()]
    if len(texts) > 1:
        texts.append(" ".join(texts))
    best: tuple[str | None, float, float] = (None, 0.0, 0.0)
    for text in texts:
        words = text.split()
        compact = text.replace(" ", "")
        for phrase, weight in phrases.items():
            n = len(phrase.split())
            cands = {
                " ".join(words[i : i + k]) for k in {n, n + 1, max(1, n - 1)} for i in range(max(1, len(words) - k + 1))
            }
            cands.add(compact)
            sim = 0.0
            for c in cands:
                if not c:
                    continue
                if phrase in c and len(c) <= len(phrase) + 4:
                    sim = 1.0
                    break
                sim = max(sim, SequenceMatcher(None, phrase, c).ratio())
            if phrase.replace(" ", "") in compact:
                sim = 1.0
            score = weight * sim
            if sim >= min_similarity and (score > best[2] or (score == best[2] and len(phrase) > len(best[0] or ""))):
                best = (phrase, sim, score)
    return best


class OcrTier(Tier):
    """RapidOCR on each image; P(roadwork) from the best work-zone phrase found."""

    def __init__(
        self,
        name: str = "ocr",
        upscale: float = 2.0,
        p_none: float = 0.3,
        p_max: float = 0.95,
        min_similarity: float = 0.8,
        text_score: float = 0.5,
        phrases: dict[str, float] | None = None,
        extra_phrases: dict[str, float] | None = None,
        threads: int | None = None,
    ) -> None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as e:  # pragma: no cover - depends on the install
            raise RuntimeError("the ocr tier needs `pip install rapidocr-onnxruntime`") from e
        self.name = name
        kwargs: dict[str, Any] = {"text_score": float(text_score), "print_verbose": False}
        if threads:
            kwargs.update({"intra_op_num_threads": int(threads), "inter_op_num_threads": 1})
        try:
            self.engine = RapidOCR(**kwargs)
        except Exception:  # older/newer releases name the options differently
            self.engine = RapidOCR()
        self.upscale = float(upscale)
        self.p_none = float(p_none)
        self.p_max = float(p_max)
        self.min_similarity = float(min_similarity)
        self.phrases = dict(phrases or WORK_ZONE_PHRASES)
        self.phrases.update({normalise(k): float(v) for k, v in (extra_phrases or {}).items()})
        self.version = "rapidocr-ppocrv4"

    def read(self, rgb: np.ndarray) -> list[tuple[str, float]]:
        """``(text, score)`` per text line found in one RGB image."""
        img = rgb
        if self.upscale and self.upscale != 1.0:
            h, w = rgb.shape[:2]
            img = np.asarray(
                Image.fromarray(rgb).resize((round(w * self.upscale), round(h * self.upscale)), Image.BICUBIC)
            )
        result, _ = self.engine(np.ascontiguousarray(img[..., ::-1]))  # RapidOCR reads arrays as BGR
        return [(str(r[1]), float(r[2])) for r in (result or [])]

    def score(self, lines: list[tuple[str, float]]) -> tuple[float, str | None]:
        phrase, _sim, strength = match_phrases([t for t, _ in lines], self.phrases, self.min_similarity)
        if phrase is None:
            return self.p_none, None
        conf = max((s for _, s in lines), default=0.5)
        strength *= 0.5 + 0.5 * min(1.0, conf)
        return self.p_none + (self.p_max - self.p_none) * strength, phrase

    def predict(self, batch: ImageBatch) -> TierOutput:
        probs, texts, matched = [], [], []
        for rgb in batch.rgb:
            try:
                lines = self.read(rgb)
            except Exception:  # one unreadable image must not fail the batch
                lines = []
            p, phrase = self.score(lines)
            probs.append(p)
            texts.append([t for t, _ in lines])
            matched.append(phrase)
        return TierOutput(prob=clip_prob(np.array(probs, dtype=np.float64)), extras={"text": texts, "matched": matched})

    def warmup(self) -> None:
        self.read(np.full((224, 224, 3), 255, dtype=np.uint8))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"engine": "rapidocr-onnxruntime", "phrases": len(self.phrases)})
        return d


@register_tier("ocr")
def _factory(name: str, **options: Any) -> Tier:
    return OcrTier(name=name, **options)
