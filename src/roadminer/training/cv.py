"""Grouped cross-validation of the classifier's train settings (``roadminer eval --cv``): out-of-fold
logits, a calibration fitted on them, and the colour cue as a baseline."""

from __future__ import annotations

from typing import Any

CV_GROUPS = ("source", "group")


def run_cv(samples: list, settings: Any, by: str, levels: list[int]) -> dict[str, Any]:
    """Leave-one-``by``-out CV of the classifier (``settings.train``) with the colour cue beside it, plus a
    calibration fitted on the out-of-fold logits (each logit comes from a model that never saw its group)."""
    import numpy as np

    from roadminer.training.calibrate import fit_calibration
    from roadminer.training.colour_fit import fit_colour_cue
    from roadminer.training.evaluate import loso_report
    from roadminer.training.train import cross_validate

    if by not in CV_GROUPS:
        raise ValueError(f"cross-validation groups by 'source' or 'group', not {by!r}")
    cfg = settings.train.model_copy(update={"levels": levels})
    res = cross_validate(samples, cfg, by=by)
    oof = res["oof_logits"]
    y = np.tile([s.label for s in samples], len(levels))
    calibration = fit_calibration(oof.reshape(-1), y)
    t, b, thr = calibration["temperature"], calibration["bias"], calibration["threshold"]
    shift = -np.log(thr / (1 - thr))
    calibrated = loso_report(samples, 1 / (1 + np.exp(-(oof / t + b + shift))), levels)
    colour = fit_colour_cue(samples, None, levels=levels, seed=cfg.seed, workers=max(1, cfg.workers))
    return {
        "mode": f"leave-one-{by}-out",
        "train_config": cfg.model_dump(),
        "report": res["report"],
        "report_calibrated": calibrated,
        "calibration": calibration,
        "colour_baseline": colour["leave_one_source_out"],
        "oof_logits": oof.round(4).tolist(),
        "names": [s.name for s in samples],
    }
