"""Run a detector recipe: leave-one-source-out detectors scored on the classifiers' evaluation views, the
shipped detector, and its head fitted on the out-of-fold detection features.

For each source a detector is trained without that source (its boxes and its backgrounds), then it looks at
the fixed evaluation views of the held-out images at levels 0-3 (``bank.render_eval_views``: the very rows the
classifiers' out-of-fold logits are scored on, so ``roadminer cascade-stack`` can pool them). A detection gives
per-class evidence (``models.detector.detection_features``: best confidence per class, best overall, box count);
the logistic head that turns it into a logit is itself fitted leave-one-source-out (the rows of source S get a
head fitted on the other sources' out-of-fold features), so the stacker sees honest per-class evidence. The
shipped detector is trained on every source; its head is fitted on all out-of-fold rows.

Trainings run ``parallel`` at a time in spawned processes (one GPU holds several YOLOv5n trainings).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from roadminer.core.logging_setup import setup_logging
from roadminer.core.scoring import auc, binary_metrics
from roadminer.models.detector import (
    default_head,
    feature_names,
    fit_head,
    head_logit,
    save_yolo,
    set_yolo_head,
    sha256_file,
)
from roadminer.training.bank import folds_for, render_eval_views
from roadminer.training.data import CLASS_NAMES, Sample, load_image_folder, summarize
from roadminer.training.detector_train import build_yolo_dataset, train_yolo
from roadminer.training.evaluate import loso_report
from roadminer.training.recipe import DetectorRecipe, RecipeDetector

ALL = "all"


def _train_one(
    job: tuple[str, str, list[bool], dict[str, Any], str, str, int, str],
) -> tuple[str, str, float, int]:
    """One detector (spawned process): the images not held out -> ``WORK/NAME.safetensors``."""
    name, root, held, det_json, init, device, workers, work = job
    setup_logging()  # a spawned process starts with loguru's default sink: log as the parent does
    det = RecipeDetector.model_validate(det_json)
    t0 = time.time()
    samples = [s for s, h in zip(load_image_folder(root), held, strict=True) if not h]
    fold_dir = Path(work) / name
    build_yolo_dataset(samples, fold_dir / "yolo_ds", size=det.dataset_size, val_frac=0.0, seed=det.seed,
                       max_negatives_per_source=det.max_negatives_per_source,
                       distorted_copies=det.distorted_copies)
    yolo = train_yolo(fold_dir / "yolo_ds" / "data.yaml", fold_dir, model=det.model, init=init or None,
                      init_max_layer=det.init_max_layer, epochs=det.epochs, time_min=det.time_min,
                      imgsz=det.imgsz, batch=det.batch, device=device, workers=workers, seed=det.seed,
                      extra_args=dict(det.train_args))
    path = Path(work) / f"{name}.safetensors"
    save_yolo(yolo.model, path, imgsz=det.imgsz, head=default_head(len(CLASS_NAMES)), version=name)
    return name, str(path), time.time() - t0, int(getattr(yolo.trainer, "epochs", det.epochs))


TRAINING_RAM = 8 << 30  # one YOLOv5n training at 320 px, batch 64, images cached (measured: 6 GiB on the CPU)


def _fits_in_memory() -> int:
    """How many trainings the free memory holds (Linux; elsewhere no cap): a box that cannot hold the recipe's
    ``parallel`` trains fewer at a time instead of being killed by the OOM killer."""
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 10
    return max(1, int(free // TRAINING_RAM))


def loso_head_logits(feats: np.ndarray, samples: list[Sample]) -> np.ndarray:
    """``feats[4, N, F]`` out-of-fold detection features -> logits ``[4, N]``: the rows of each source from
    a head fitted (levels pooled) on the other sources' rows."""
    y = np.array([s.label for s in samples])
    src = np.array([s.source for s in samples])
    n_lv, n, f = feats.shape
    out = np.zeros((n_lv, n))
    for s in sorted(set(src.tolist())):
        m = src == s
        head = fit_head(feats[:, ~m].reshape(-1, f), np.tile(y[~m], n_lv))
        out[:, m] = head_logit(head, feats[:, m].reshape(-1, f)).reshape(n_lv, -1)
    return out


def _features(weights: Path, views: np.ndarray, det: RecipeDetector, device: str) -> np.ndarray:
    from roadminer.models.detector import YoloTier

    tier = YoloTier(weights=str(weights), device=device, imgsz=det.imgsz, conf=det.conf, batch_size=64)
    feats, _ = tier.features(list(views))
    return feats


def run_detector_recipe(
    rec: DetectorRecipe,
    root: Path,
    out: Path,
    *,
    cv: bool = True,
    report: Path | None = None,
    init: str | None = None,
    device: str = "auto",
    workers: int = 0,
    parallel: int | None = None,
    recipe_path: Path | None = None,
    work: Path | None = None,
) -> dict[str, Any]:
    """Train the fold detectors (``cv``) and the shipped one; write ``out`` (+ ``.card.json``) and, with
    ``report``, ``REPORT-source.json`` in the layout ``cascade-stack --tier yolo=FILE`` reads."""
    det = rec.detector
    init = init if init is not None else det.init
    if init and not Path(init).is_file():
        raise FileNotFoundError(f"detector init weights not found: {init}")
    if device == "auto":
        import torch

        device = "0" if torch.cuda.is_available() else "cpu"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(work) if work else out.parent / f"{out.stem}_work"
    work.mkdir(parents=True, exist_ok=True)
    samples = load_image_folder(root)
    names = [s.name for s in samples]
    n = len(samples)
    cores = os.cpu_count() or 1
    t0 = time.time()
    views = render_eval_views(samples, rec.eval_seed, workers or cores) if cv else None
    folds = folds_for(samples, "source") if cv else []
    jobs = [(name, held) for name, held in folds] + [(ALL, np.zeros(n, dtype=bool))]
    par = max(1, min(parallel or rec.parallel, len(jobs), _fits_in_memory()))
    per_job = max(1, cores // par)
    det_json = det.model_dump()
    done: dict[str, tuple[str, float, int]] = {}
    logger.info("detector recipe {}: {} trainings, {} at a time on {} ({} loader workers each)",
                rec.name, len(jobs), par, device, per_job)
    args = [(name, str(root), held.tolist(), det_json, str(init or ""), device, per_job, str(work))
            for name, held in jobs]
    with ProcessPoolExecutor(par, mp_context=get_context("spawn")) as pool:
        for name, path, sec, epochs in pool.map(_train_one, args):
            done[name] = (path, sec, epochs)
            logger.info("detector {} trained in {:.0f}s ({} epochs)", name, sec, epochs)
    summary: dict[str, Any] = {"recipe": rec.name, "images": n, "counts": summarize(samples), "device": device,
                               "train_seconds": {k: round(v[1], 1) for k, v in done.items()},
                               "epochs": {k: v[2] for k, v in done.items()}}
    head = default_head(len(CLASS_NAMES))
    if views is None:
        logger.warning("no --cv source: the detector keeps the default head (P rises with the best detection); "
                       "its head is fitted on out-of-fold features only")
    else:
        f_names = feature_names(CLASS_NAMES)
        feats = np.zeros((4, n, len(f_names)))
        for name, held in folds:
            idx = np.flatnonzero(held)
            rows = np.concatenate([idx + lv * n for lv in range(4)])
            feats[:, idx] = _features(Path(done[name][0]), views[rows], det, device).reshape(4, len(idx), -1)
        y = np.array([s.label for s in samples])
        logits = loso_head_logits(feats, samples)
        rep = loso_report(samples, 1 / (1 + np.exp(-logits)), [0, 1, 2, 3])
        src = np.array([s.source for s in samples])
        rep["max_any_auc"] = {s: auc(y[src == s], feats[:, src == s, len(CLASS_NAMES)].max(axis=0))
                              for s in sorted(set(src.tolist()))}
        rep["max_any_pooled"] = binary_metrics(np.tile(y, 4), feats[:, :, len(CLASS_NAMES)].reshape(-1))
        head = fit_head(feats.reshape(-1, len(f_names)), np.tile(y, 4))
        summary["cv"] = {"source": {"pooled": rep["pooled"], "per_source": {
            k: {m: v.get(m) for m in ("mcc", "auc", "recall", "fpr")} for k, v in rep["per_source"].items()}}}
        if report is not None:
            path = Path(f"{report}-source.json")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"names": names, "levels": [0, 1, 2, 3], "recipe": rec.name, "by": "source",
                                        "oof_logits": logits.tolist(), "oof_features": feats.tolist(),
                                        "feature_names": f_names, "report": rep}, default=float))
            logger.info("wrote {}", path)
    final = Path(done[ALL][0])
    set_yolo_head(final, head, None)
    out.write_bytes(final.read_bytes())
    recipe_sha = hashlib.sha256(Path(recipe_path).read_bytes()).hexdigest() if recipe_path else None
    card = {"name": rec.name, "weights": out.name, "sha256": sha256_file(out), "recipe": rec.model_dump(),
            "recipe_sha256": recipe_sha, "init": str(init) if init else None,
            "init_sha256": sha256_file(init) if init else None, "head": head,
            "feature_names": feature_names(CLASS_NAMES), "data": {"root": str(root), "counts": summarize(samples)},
            "train_seconds": summary["train_seconds"], "epochs": summary["epochs"],
            "seconds": round(time.time() - t0, 1),
            "cv": summary.get("cv", {}),
            "licence": "ultralytics YOLO (AGPL-3.0); init weights YOLOv5n COCO (AGPL-3.0); data research-only"}
    out.with_suffix(".card.json").write_text(json.dumps(card, indent=1, default=float) + "\n")
    summary["model"] = str(out)
    summary["sha256"] = card["sha256"]
    return summary
