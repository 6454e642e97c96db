"""Offline evaluation of a predictor under validator-parity views, and grouped reports (per held-out
source, per level, dashcam-style sources pooled). The numbers themselves come from
:mod:`roadminer.core.scoring` (the validator's rounding: ``p > 0.5`` is "roadwork", exactly 0.5 is not).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from roadminer.core.scoring import binary_metrics, to_label
from roadminer.training.data import Sample

DASHCAM_SOURCES = ("pranav", "camvid", "gtsdb", "wzcity")  # vehicle-camera sources


def _f(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


def loso_report(samples: Sequence[Sample], probs: np.ndarray, levels: Sequence[int]) -> dict[str, Any]:
    """Report out-of-fold probabilities ``probs[level_index, sample]`` the way the data README asks:
    per held-out source (all levels pooled, and per level), gtsdb sign vs scene recall, dashcam-style
    sources pooled, and everything pooled."""
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    y = np.array([s.label for s in samples])
    src = np.array([s.source for s in samples])
    n_lv = probs.shape[0]

    def pooled(mask: np.ndarray) -> dict[str, Any]:
        return binary_metrics(np.tile(y[mask], n_lv), probs[:, mask].reshape(-1))

    report: dict[str, Any] = {"levels": list(levels), "per_source": {}}
    for s in sorted(set(src.tolist())):
        m = src == s
        entry = pooled(m)
        entry["per_level"] = {str(lv): binary_metrics(y[m], probs[k, m]) for k, lv in enumerate(levels)}
        if s == "gtsdb":
            boxes = np.array([smp.has_boxes for smp in samples])
            for key, mm in (
                ("sign_positives", m & (y == 1) & boxes),
                ("scene_positives", m & (y == 1) & ~boxes),
            ):
                if mm.any():
                    entry[key + "_recall"] = _f(float(to_label(probs[:, mm]).mean()))
        report["per_source"][s] = entry
    dash = np.isin(src, DASHCAM_SOURCES)
    if dash.any():
        report["dashcam_pooled"] = pooled(dash)
        report["dashcam_pooled"]["per_level"] = {
            str(lv): binary_metrics(y[dash], probs[k, dash]) for k, lv in enumerate(levels)
        }
    report["pooled"] = pooled(np.ones(len(samples), dtype=bool))
    report["pooled"]["per_level"] = {str(lv): binary_metrics(y, probs[k]) for k, lv in enumerate(levels)}
    return report


def evaluate_router(
    router: Any,
    samples: Sequence[Sample],
    levels: Sequence[int] = (0, 1, 2, 3),
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """Run a cascade (``EarlyExitRouter``-like: ``predict(ImageBatch) -> CascadeResult``) on each sample's
    validator view at each level. Returns n, mcc, accuracy, auc, brier, per level, per tier and per source."""
    import hashlib

    from rich.progress import Progress

    from roadminer.imaging.decode import ImagePolicy, decode_rgb, encode_jpeg
    from roadminer.imaging.views import augment_view
    from roadminer.models.base import ImageBatch

    rng = np.random.default_rng(seed)
    n_lv = len(levels)
    probs = np.zeros((n_lv, len(samples)))
    tier_names: list[str] = [t.name for t in getattr(router, "tiers", [])]
    tier_probs = {t: np.full((n_lv, len(samples)), np.nan) for t in tier_names}
    exits: dict[str, int] = {}
    errors: list[str] = []
    with Progress(disable=not progress) as bar:
        task = bar.add_task("eval", total=n_lv * len(samples))
        for k, lv in enumerate(levels):
            for start in range(0, len(samples), batch_size):
                chunk = samples[start : start + batch_size]
                payloads = [encode_jpeg(augment_view(s.read_pil(), lv, rng)) for s in chunk]
                rgb = [decode_rgb(b, ImagePolicy()) for b in payloads]
                keys = [hashlib.sha256(b).hexdigest() for b in payloads]
                res = router.predict(ImageBatch(rgb=rgb, payloads=payloads, keys=keys))
                probs[k, start : start + len(chunk)] = res.prob
                for name, arr in res.tier_probs.items():
                    tier_probs.setdefault(name, np.full((n_lv, len(samples)), np.nan))
                    tier_probs[name][k, start : start + len(chunk)] = arr
                for e in res.exit_tier:
                    exits[e] = exits.get(e, 0) + 1
                errors.extend(res.errors)
                bar.advance(task, len(chunk))
    y = np.array([s.label for s in samples])
    out = binary_metrics(np.tile(y, n_lv), probs.reshape(-1))
    out["levels"] = list(levels)
    out["seed"] = seed
    out["per_level"] = {str(lv): binary_metrics(y, probs[k]) for k, lv in enumerate(levels)}
    total = max(1, sum(exits.values()))
    per_tier: dict[str, Any] = {}
    for name, arr in tier_probs.items():
        flat_p = arr.reshape(-1)
        ran = np.isfinite(flat_p)
        entry = binary_metrics(np.tile(y, n_lv)[ran], flat_p[ran]) if ran.any() else {"n": 0}
        entry["exit_rate"] = _f(exits.get(name, 0) / total)
        per_tier[name] = entry
    out["per_tier"] = per_tier
    out["per_source"] = loso_report(samples, probs, levels)["per_source"]
    out["errors"] = errors[:20]
    out["probs"] = probs
    return out


def regression_sample(samples: Sequence[Sample], per_cell: int = 6) -> list[Sample]:
    """A fixed, small sample of real photos for the shipped cascade's regression test: per (source, label)
    the ``per_cell`` images whose names hash lowest (stable across machines and file order)."""
    import hashlib

    cells: dict[tuple[str, int], list[Sample]] = {}
    for s in samples:
        cells.setdefault((s.source, s.label), []).append(s)
    out: list[Sample] = []
    for key in sorted(cells):
        ranked = sorted(cells[key], key=lambda s: hashlib.sha256(s.name.encode()).hexdigest())
        out.extend(ranked[:per_cell])
    return out


def strip_probe(
    router: Any,
    negatives: Sequence[Sample],
    donors: Sequence[Sample],
    height: float = 0.12,
    levels: Sequence[int] = (0, 3),
    seed: int = 5,
) -> dict[str, Any]:
    """The bonnet probe: does the cascade call a negative road work because of its bottom strip? Scores each
    negative as it is and with the bottom ``height`` of a donor frame (``donors`` in turn: e.g. windshield
    frames, bonnet and dashboard edge) pasted in, on the same validator views (``seed``). A cascade that uses
    the picture and not the camera answers both alike. Returns the false-positive rate per level, overall
    and per source, for both, and how many negatives the strip alone turned into road work."""
    import dataclasses
    import io

    from roadminer.training.copy_paste import bottom_strip, paste_strip

    if not negatives or not donors:
        raise ValueError("the probe needs negatives and donor frames")
    if any(s.label != 0 for s in negatives):
        raise ValueError("the probe's negatives must all be labelled no_roadwork")
    strips = [bottom_strip(d.read_pil(), height) for d in donors]  # only the strips stay in memory

    def pasted(i: int, s: Sample) -> Sample:
        buf = io.BytesIO()
        paste_strip(s.read_pil(), strips[i % len(strips)], height).save(buf, "PNG")
        return dataclasses.replace(s, path=None, data=buf.getvalue(), meta={**s.meta, "name": s.name})

    variants = {"as_is": list(negatives), "with_strip": [pasted(i, s) for i, s in enumerate(negatives)]}
    src = np.array([s.source for s in negatives])
    out: dict[str, Any] = {"n": len(negatives), "levels": list(levels), "height": height, "seed": seed,
                           "donors": sorted({d.source for d in donors})}
    flagged: dict[str, np.ndarray] = {}
    for name, ss in variants.items():
        probs = evaluate_router(router, ss, levels, seed=seed, progress=False)["probs"]
        flagged[name] = to_label(probs) == 1
        out[name] = {
            "fpr": _f(float(flagged[name].mean())),
            "per_level": {str(lv): _f(float(flagged[name][k].mean())) for k, lv in enumerate(levels)},
            "per_source": {s: _f(float(flagged[name][:, src == s].mean())) for s in sorted(set(src.tolist()))},
        }
    out["turned_by_strip"] = _f(float((flagged["with_strip"] & ~flagged["as_is"]).mean()))
    return out
