"""Distillation: the full cascade (or one configured teacher tier, e.g. the VLM) labels images softly and
a fast student tier learns those labels, so more traffic can exit at the cheap tier (the VL2Lite idea).

The student loss is the standard knowledge-distillation mix: target = alpha * hard label + (1 - alpha) *
teacher probability where a label is known, the teacher probability alone otherwise. The colour-cue
student fits that target exactly (logistic regression on soft targets); a classifier student is trained
by ``roadminer.training.train`` on the teacher's confident pseudo-labels.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from roadminer.lifecycle.registry import ModelCard, ModelRegistry

Teacher = Callable[[list[bytes]], np.ndarray]  # encoded images -> P(roadwork)


def build_teacher(settings: Any, registry: ModelRegistry | None = None, tier: str | None = None) -> Teacher:
    """Full served cascade (``tier`` None or ``"cascade"``: every tier on every image, no early exit) or the
    single tier of that name, as a function of JPEG bytes."""
    from roadminer.imaging.decode import ImagePolicy, decode_rgb
    from roadminer.lifecycle.registry import build_router
    from roadminer.models.base import ImageBatch, build_tier

    policy = ImagePolicy.from_config(settings.images)
    full = tier is None or tier == "cascade"
    if full:
        model: Any = build_router(settings, registry, warmup=False)
    else:
        cascade = registry.apply(settings.cascade) if registry is not None else settings.cascade
        matches = [t for t in cascade.tiers if t.name == tier]
        if not matches:
            raise ValueError(
                f"teacher tier {tier!r} is not in the cascade ({[t.name for t in cascade.tiers]})"
            )
        model = build_tier(matches[0].kind, matches[0].name, matches[0].options)

    def teach(payloads: list[bytes]) -> np.ndarray:
        out = np.zeros(len(payloads))
        for i in range(0, len(payloads), 32):
            chunk = payloads[i : i + 32]
            batch = ImageBatch(
                rgb=[decode_rgb(b, policy) for b in chunk],
                payloads=list(chunk),
                keys=[hashlib.sha256(b).hexdigest() for b in chunk],
            )
            res = model.predict(batch, early_exit=False) if full else model.predict(batch)
            out[i : i + len(chunk)] = np.asarray(res.prob, dtype=np.float64)
        return out

    return teach


def encoded_views(samples: Sequence[Any], levels: Sequence[int], seed: int = 0) -> list[tuple[int, bytes]]:
    """(sample index, JPEG bytes) of each sample's validator-parity view at each level."""
    from roadminer.imaging.decode import encode_jpeg
    from roadminer.imaging.views import validator_view

    rng = np.random.default_rng(seed)
    return [
        (i, encode_jpeg(validator_view(s.read_pil(), lv, rng)))
        for lv in levels
        for i, s in enumerate(samples)
    ]


def fit_soft_logistic(x: np.ndarray, target: np.ndarray, c: float = 1.0) -> dict[str, Any]:
    """Logistic regression on soft targets: every row appears as a positive with weight t and a negative
    with weight 1 - t, which minimises the cross-entropy to t."""
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    t = np.clip(target, 0.0, 1.0)
    xx = np.concatenate([z, z])
    yy = np.concatenate([np.ones(len(z)), np.zeros(len(z))])
    ww = np.concatenate([t, 1.0 - t]) + 1e-9
    clf = LogisticRegression(C=c, max_iter=2000)
    clf.fit(xx, yy, sample_weight=ww)
    return {
        "coef": clf.coef_[0].tolist(),
        "intercept": float(clf.intercept_[0]),
        "mean": mean.tolist(),
        "scale": scale.tolist(),
    }


def distill_colour(
    views: Sequence[bytes], soft: np.ndarray, hard: Sequence[int | None], out: Path, alpha: float = 0.5
) -> dict[str, Any]:
    """Fit the colour-cue student (``colour_cue.json`` for ``ColourCueTier``)."""
    from roadminer.imaging.decode import ImagePolicy, decode_rgb
    from roadminer.models.colour import FEATURE_NAMES, colour_features

    policy = ImagePolicy()
    x = np.stack([colour_features(decode_rgb(b, policy)) for b in views])
    target = np.array(
        [s if h is None else alpha * h + (1 - alpha) * s for s, h in zip(soft, hard, strict=True)]
    )
    spec = fit_soft_logistic(x, target)
    spec.update(
        {
            "version": f"colour-distilled-{out.parent.name or 'student'}",
            "features": list(FEATURE_NAMES),
            "distilled": {"n": len(views), "alpha": alpha},
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(spec, indent=2) + "\n")
    return spec


def distill(
    settings: Any,
    registry: ModelRegistry,
    samples: Sequence[Any],
    student_tier: str,
    work_dir: str | Path,
    teacher_tier: str | None = None,
    levels: Sequence[int] = (0, 1, 2, 3),
    seed: int = 0,
    alpha: float = 0.5,
    use_labels: bool = True,
) -> ModelCard:
    """Label validator views of ``samples`` with the teacher, fit the student tier, register a candidate."""
    tiers = {t.name: t for t in settings.cascade.tiers}
    if student_tier not in tiers:
        raise ValueError(f"student tier {student_tier!r} is not in the cascade ({sorted(tiers)})")
    kind = tiers[student_tier].kind
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    teacher = build_teacher(settings, registry, teacher_tier)
    views = encoded_views(samples, levels, seed)
    payloads = [b for _, b in views]
    soft = teacher(payloads)
    hard = [samples[i].label if use_labels else None for i, _ in views]
    agree = float(
        np.mean([(p > 0.5) == h for p, h in zip(soft, hard, strict=True) if h is not None] or [0.0])
    )
    logger.info(
        "teacher ({}) labelled {} views; agreement with known labels {:.3f}",
        teacher_tier or "cascade",
        len(views),
        agree,
    )
    parent = registry.current(student_tier)
    data = {
        "n_samples": len(samples),
        "n_views": len(views),
        "levels": list(levels),
        "teacher": teacher_tier or "cascade",
        "teacher_label_agreement": round(agree, 4),
        "alpha": alpha,
    }
    if kind == "colour":
        out = work / "colour_cue.json"
        distill_colour(payloads, soft, hard, out, alpha)
        return registry.register(
            student_tier,
            kind,
            {"colour_cue.json": out},
            parent=parent if isinstance(parent, str) else None,
            data=data,
            notes="distilled from " + (teacher_tier or "the full cascade"),
        )
    if kind == "classifier":
        return _distill_classifier(
            settings, registry, student_tier, work, views, soft, hard, alpha, data, parent
        )
    raise ValueError(f"no distillation student for tier kind {kind!r} (colour, classifier)")


def _distill_classifier(
    settings: Any,
    registry: ModelRegistry,
    tier: str,
    work: Path,
    views: Sequence[tuple[int, bytes]],
    soft: np.ndarray,
    hard: Sequence[int | None],
    alpha: float,
    data: dict[str, Any],
    parent: Any,
) -> ModelCard:
    """Classifier student: the teacher's mixed targets, thresholded, as an image folder for ``train``."""
    from roadminer.training.train import train

    folder = work / "pseudo"
    for sub in ("roadwork", "no_roadwork"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for (i, payload), p, h in zip(views, soft, hard, strict=True):
        t = p if h is None else alpha * h + (1 - alpha) * p
        if abs(t - 0.5) < 0.1:  # too unsure to teach
            continue
        sub = "roadwork" if t > 0.5 else "no_roadwork"
        (folder / sub / f"v{i}_{hashlib.sha256(payload).hexdigest()[:12]}.jpg").write_bytes(payload)
    card = registry.current_card(tier)
    init = registry.resolved_options(card).get("weights") if card else None
    out = work / "student"
    train(folder, out, settings.train, init_checkpoint=init)
    return registry.register(
        tier,
        "classifier",
        {"model.safetensors": out / "model.safetensors", "train_card.json": out / "card.json"},
        parent=parent if isinstance(parent, str) else None,
        data=data,
        notes="distilled (pseudo-labels) from " + str(data["teacher"]),
    )
