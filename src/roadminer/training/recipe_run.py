"""Run a training recipe end to end: the data copy, the view bank, out-of-fold runs, the final fit, the card."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from roadminer.models.classifier import save_classifier
from roadminer.training.bank import cross_validate_bank, fit_bank, render_bank, resolve_device, summarize_rows
from roadminer.training.data import DatasetError, Sample, export_downsized, load_image_folder, summarize
from roadminer.training.evaluate import loso_report
from roadminer.training.recipe import DetectorRecipe, TrainRecipe


def prepare_data(rec: TrainRecipe | DetectorRecipe, data: Path, work: Path) -> Path:
    """The recipe's training copy of ``data`` under ``work`` (made once; reused when its stamp matches)."""
    d = rec.data
    stamp = json.dumps(d.model_dump(), sort_keys=True) + str(data.resolve())
    target = work / f"{rec.name}-data"
    if (target / ".recipe-data").is_file() and (target / ".recipe-data").read_text() == stamp:
        return target
    info = export_downsized(data, target, d.short_side, d.quality, max_per_source=d.max_per_source,
                            every_nth=d.every_nth, seed=d.seed, fmt=d.format)
    (target / ".recipe-data").write_text(stamp)
    logger.info("training copy: {} images, {:.1f} MiB in {}", info["n"], info["bytes"] / 2**20, target)
    return target


class EvalCopyError(DatasetError):
    """The ``--eval-data`` copy does not hold the training images as they are labelled."""


def same_images(samples: list[Sample], other: Path) -> list[Sample]:
    """The images of ``samples`` as another copy (``other``, e.g. the full-size dataset) holds them, in the
    same order, matched by file stem; a clear error names what that copy lacks or labels otherwise."""
    by_stem = {Path(s.name).stem: s for s in load_image_folder(other)}
    missing = [s.name for s in samples if Path(s.name).stem not in by_stem]
    if missing:
        raise EvalCopyError(f"{other}: {len(missing)} of the {len(samples)} training images are not there "
                           f"(first: {missing[0]})")
    out = [by_stem[Path(s.name).stem] for s in samples]
    differ = [s.name for s, o in zip(samples, out, strict=True) if (s.label, s.source) != (o.label, o.source)]
    if differ:
        raise EvalCopyError(f"{other}: {len(differ)} images have another label or source (first: {differ[0]})")
    return out


def run_recipe(
    rec: TrainRecipe,
    data: Path,
    out: Path,
    cv: list[str],
    report: Path | None = None,
    prepared: bool = False,
    device: str = "auto",
    workers: int = 0,
    max_steps: int | None = None,
    final: bool = True,
    recipe_path: Path | None = None,
    eval_data: Path | None = None,
) -> dict[str, Any]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    root = Path(data) if prepared else prepare_data(rec, Path(data), out.parent)
    samples = load_image_folder(root)
    dev = resolve_device(device)
    t0 = time.time()
    bank = render_bank(samples, rec.bank, rec.fit.source_power, rec.eval_seed, workers, dev,
                       eval_samples=None if eval_data is None else same_images(samples, eval_data))
    eval_copy = None if eval_data is None else str(eval_data)
    summary: dict[str, Any] = {"recipe": rec.name, "images": len(samples), "counts": summarize(samples),
                               "eval_data": eval_copy,
                               "bank_rows": summarize_rows(bank), "render_seconds": round(time.time() - t0, 1),
                               "device": str(dev), "cv": {}}
    names = [s.name for s in samples]
    # What the out-of-fold rows were scored on: tiers are stacked only on the same views (cascade/stack.py).
    views_sha = (hashlib.sha256(np.ascontiguousarray(bank.eval_views.cpu().numpy()).data).hexdigest()
                 if cv and report is not None else None)
    for by in cv:
        res = cross_validate_bank(bank, rec.fit, by, max_steps=max_steps)
        oof = res["oof_logits"]
        held = ~np.isnan(oof[0])
        sub = [s for s, h in zip(samples, held, strict=True) if h]
        rep = loso_report(sub, 1 / (1 + np.exp(-oof[:, held])), [0, 1, 2, 3])
        rep["folds"] = res["folds"]
        rep["by"] = by
        summary["cv"][by] = {"pooled": rep["pooled"], "folds": res["folds"]}
        if report is not None:
            path = Path(f"{report}-{by.replace(':', '-')}.json")
            path.parent.mkdir(parents=True, exist_ok=True)
            # The layout `roadminer cascade-stack --tier NAME=FILE` reads (NaN where never held out).
            path.write_text(json.dumps({"names": names, "levels": [0, 1, 2, 3], "recipe": rec.name, "by": by,
                                        "eval_views_sha256": views_sha,
                                        "eval_data": eval_copy,
                                        "oof_logits": np.where(np.isnan(oof), None, oof).tolist(),
                                        "report": rep}, default=float))
            logger.info("wrote {}", path)
    if final:
        fit = fit_bank(bank, np.ones(len(samples), dtype=bool), rec.fit, max_steps=max_steps)
        recipe_sha = hashlib.sha256(Path(recipe_path).read_bytes()).hexdigest() if recipe_path else None
        version = f"{rec.name}-{time.strftime('%Y%m%d%H%M%S')}"
        save_classifier(fit.model.float().cpu(), out, rec.fit.arch, fit.prep,
                        extra={"version": version, "recipe": rec.name, "recipe_sha256": recipe_sha})
        card = {"name": rec.name, "version": version, "recipe": rec.model_dump(), "recipe_sha256": recipe_sha,
                "data": {"root": str(root), "counts": summarize(samples), "n": len(samples)},
                "bank_rows": summary["bank_rows"], "fit_seconds": round(fit.seconds, 1),
                "final_loss": round(float(np.mean(fit.loss[-20:])), 4), "cv": summary["cv"]}
        out.with_suffix(".card.json").write_text(json.dumps(card, indent=1, default=float) + "\n")
        summary["model"] = str(out)
        summary["fit_seconds"] = round(fit.seconds, 1)
    return summary
