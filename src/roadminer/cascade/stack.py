"""Fit the cascade's consensus (stacking weights + exit thresholds) from out-of-fold predictions.

Inputs are the JSON files of grouped cross-validations that scored every image on the same validator views
(``roadminer eval --cv source`` for a classifier: ``oof_logits``; the colour cue on those views:
``oof_probs``), one per tier, in cascade order. Every (level, image) pair is one row. The cascade fit is
:func:`roadminer.cascade.fit.fit_cascade`, scored leave-one-source-out by
:func:`roadminer.cascade.fit.grouped_cv` (stacker and thresholds never see the held-out source), then
fitted once on every row for shipping.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from roadminer.cascade.consensus import ConsensusParams
from roadminer.cascade.fit import fit_cascade, grouped_cv
from roadminer.core.scoring import binary_metrics
from roadminer.training.data import Sample
from roadminer.training.evaluate import DASHCAM_SOURCES, loso_report


def load_oof(path: str | Path, names: Sequence[str]) -> tuple[np.ndarray, list[int]]:
    """Out-of-fold probabilities ``[levels, N]`` from a CV JSON, rows aligned with ``names``."""
    return _oof_of(json.loads(Path(path).read_text()), path, names)


def _oof_of(data: dict[str, Any], path: str | Path, names: Sequence[str]) -> tuple[np.ndarray, list[int]]:
    if list(data["names"]) != list(names):
        raise ValueError(f"{path}: its images are not those of the dataset (same files, same order)")
    if "oof_probs" in data:
        probs = np.asarray(data["oof_probs"], dtype=np.float64)
    else:
        probs = 1.0 / (1.0 + np.exp(-np.asarray(data["oof_logits"], dtype=np.float64)))
    levels = data.get("levels") or data.get("train_config", {}).get("levels") or list(range(probs.shape[0]))
    return np.atleast_2d(probs), [int(x) for x in levels]


def _load_tiers(
    tier_files: Sequence[tuple[str, str | Path]], names: Sequence[str]
) -> tuple[list[np.ndarray], list[int]]:
    """Each tier's out-of-fold probabilities ``[levels, N]`` and the levels they all score."""
    files = [json.loads(Path(path).read_text()) for _, path in tier_files]
    loaded = [_oof_of(data, path, names) for data, (_, path) in zip(files, tier_files, strict=True)]
    views = {name: data.get("eval_views_sha256") for data, (name, _) in zip(files, tier_files, strict=True)}
    if len({v for v in views.values() if v is not None}) > 1:
        which = ", ".join(f"{n} {str(v)[:12]}" for n, v in views.items())
        raise ValueError(f"the tiers' CVs were scored on different evaluation views (another --eval-data copy, "
                         f"eval_seed or image library): {which}")
    levels = loaded[0][1]
    if any(lv != levels for _, lv in loaded):
        raise ValueError("every tier's CV must score the same levels")
    return [p for p, _ in loaded], levels


def _exit_rates(exit_index: np.ndarray, tiers: Sequence[str]) -> dict[str, float]:
    return {t: round(float(np.mean(exit_index == k)), 4) for k, t in enumerate(tiers)}


def stack_from_oof(
    samples: Sequence[Sample],
    tier_files: Sequence[tuple[str, str | Path]],
    *,
    class_weight: str | None = "balanced",
    mcc_threshold: bool = True,
    c: float = 1.0,
    tolerance: float = 0.0,
    tier_cost: Sequence[float] | None = None,
) -> tuple[ConsensusParams, dict[str, Any]]:
    """The shipped consensus (fitted on every row) and a report: per tier alone, the stacked pool of every
    tier and the early-exit cascade, each scored leave-one-source-out (per source, per level, exit rates)."""
    names = [s.name for s in samples]
    tiers = [t for t, _ in tier_files]
    loaded, levels = _load_tiers(tier_files, names)
    n_lv, n = len(levels), len(samples)
    probs = np.stack([p.reshape(-1) for p in loaded], axis=1)  # [L*N, T], level-major rows
    y = np.tile([s.label for s in samples], n_lv)
    src = np.tile([s.source for s in samples], n_lv)
    kw: dict[str, Any] = {"c": c, "class_weight": class_weight, "mcc_threshold": mcc_threshold,
                          "tolerance": tolerance}
    cost = list(tier_cost) if tier_cost is not None else None

    def grid(flat: np.ndarray) -> np.ndarray:
        return flat.reshape(n_lv, n)

    report: dict[str, Any] = {"tiers": tiers, "levels": levels, "rows": len(y), "sources": {}}
    report["fit_settings"] = {"class_weight": class_weight, "mcc_threshold": mcc_threshold, "c": c,
                              "tolerance": tolerance,
                              "tier_cost": cost, "cv": "leave-one-source-out (stacker and thresholds)"}
    alone: dict[str, Any] = {}
    for k, t in enumerate(tiers):
        one = grouped_cv(probs[:, [k]], y, src, [t], **kw)
        alone[t] = loso_report(samples, grid(one.prob), levels)
    report["single_tier"] = alone
    cv = grouped_cv(probs, y, src, tiers, tier_cost=cost, **kw)
    report["stacked_all_tiers"] = loso_report(samples, grid(cv.prob_all), levels)
    casc = loso_report(samples, grid(cv.prob), levels)
    casc["exit_rate"] = _exit_rates(cv.exit_index, tiers)
    ex = grid(cv.exit_index)
    casc["exit_rate_per_level"] = {str(lv): _exit_rates(ex[i], tiers) for i, lv in enumerate(levels)}
    for s in sorted(set(src.tolist())):
        casc["per_source"][s]["exit_rate"] = _exit_rates(cv.exit_index[src == s], tiers)
    dash = np.isin(src, DASHCAM_SOURCES)
    if dash.any():
        casc["dashcam_pooled"]["exit_rate"] = _exit_rates(cv.exit_index[dash], tiers)
    if cost is not None and sum(cost) > 0:
        reach = [float(np.mean(cv.exit_index >= k)) for k in range(len(tiers))]
        casc["relative_cost"] = round(sum(r * w for r, w in zip(reach, cost, strict=True)) / sum(cost), 4)
    casc["mcc_lost_vs_all_tiers"] = round(
        (binary_metrics(y, cv.prob_all)["mcc"] or 0.0) - (binary_metrics(y, cv.prob)["mcc"] or 0.0), 4
    )
    report["cascade"] = casc
    report["folds"] = cv.folds
    params, rep = fit_cascade(probs, y, tiers, tier_cost=cost, **kw)
    report["full_fit"] = rep.to_json()
    params.report = {
        "fitted_on": f"{len(y)} out-of-fold rows ({n} images x levels {levels}), tiers {tiers}",
        "full_fit": rep.to_json(),
        "leave_one_source_out": {
            "pooled_mcc": {t: alone[t]["pooled"]["mcc"] for t in tiers}
            | {"stacked": report["stacked_all_tiers"]["pooled"]["mcc"], "cascade": casc["pooled"]["mcc"]},
            "dashcam_mcc": {t: alone[t].get("dashcam_pooled", {}).get("mcc") for t in tiers}
            | {"stacked": report["stacked_all_tiers"].get("dashcam_pooled", {}).get("mcc"),
               "cascade": casc.get("dashcam_pooled", {}).get("mcc")},
            "exit_rate": casc["exit_rate"],
        },
    }
    return params, report


def summary_table(report: dict[str, Any]) -> str:
    """Markdown: per source MCC / recall / FPR of each tier alone, the stacked pool and the cascade."""
    cols = [(t, report["single_tier"][t]) for t in report["tiers"]]
    cols += [("stacked (all tiers)", report["stacked_all_tiers"]), ("cascade (early exit)", report["cascade"])]
    pooled = [k for k in ("dashcam_pooled", "pooled") if k in report["cascade"]]
    rows = [*sorted(report["cascade"]["per_source"]), *pooled]
    head = "| source | " + " | ".join(name for name, _ in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]

    def cell(e: dict[str, Any]) -> str:
        if e.get("mcc") is not None:
            return f"MCC {e['mcc']:.3f} (AUC {e['auc']:.3f})"
        if e.get("positives"):
            return f"recall {e['recall']:.3f}"
        return f"FPR {e['fpr']:.3f}"

    for r in rows:
        entries = [rep["per_source"][r] if r in rep["per_source"] else rep[r] for _, rep in cols]
        lines.append(f"| {r} | " + " | ".join(cell(e) for e in entries) + " |")
    return "\n".join(lines)


def level_table(report: dict[str, Any]) -> str:
    cols = [(t, report["single_tier"][t]) for t in report["tiers"]]
    cols += [("stacked", report["stacked_all_tiers"]), ("cascade", report["cascade"])]
    levels = [str(x) for x in report["levels"]]
    lines = ["| level | " + " | ".join(n for n, _ in cols) + " | cascade exit rates |", "|" + "---|" * (len(cols) + 2)]
    for lv in levels:
        vals = [f"{rep['pooled']['per_level'][lv]['mcc']:.3f}" for _, rep in cols]
        ex = report["cascade"]["exit_rate_per_level"][lv]
        lines.append(f"| {lv} | " + " | ".join(vals) + " | " + ", ".join(f"{k} {v:.2f}" for k, v in ex.items()) + " |")
    return "\n".join(lines)


def score_oof(
    samples: Sequence[Sample], tier_files: Sequence[tuple[str, str | Path]], params: ConsensusParams
) -> dict[str, Any]:
    """A fitted consensus replayed on out-of-fold predictions of a grouped CV (e.g. ``--cv group:wzcity``: train
    on eleven cities, score the twelfth): per held-out group and pooled, each tier alone (its raw probability),
    the consensus's first stage and the early-exit cascade, with exit rates. Only rows every tier held out count."""
    from roadminer.cascade.fit import simulate

    tiers = [t for t, _ in tier_files]
    if params.tiers[: len(tiers)] != tiers or len(params.stages) != len(tiers):
        raise ValueError(f"the consensus is fitted on tiers {params.tiers}, not {tiers}")
    loaded, levels = _load_tiers(tier_files, [s.name for s in samples])
    held = [np.isfinite(p).all(axis=0) for p in loaded]
    if any(not np.array_equal(h, held[0]) for h in held):
        raise ValueError("the tiers' CV files hold out different images (run them with the same --cv)")
    keep = np.flatnonzero(held[0])
    if keep.size == 0:
        raise ValueError("no image is held out in these CV files")
    n_lv = len(levels)
    probs = np.stack([p[:, keep].reshape(-1) for p in loaded], axis=1)  # [L*K, T], level-major
    sim = simulate(params, probs)
    answers = {f"{t} (raw)": probs[:, k] for k, t in enumerate(tiers)}
    answers[f"stage 0 ({tiers[0]})"] = params.stage_prob(0, probs[:, :1])
    answers["cascade"] = sim.prob
    y = np.tile([samples[i].label for i in keep], n_lv)
    group = np.tile([samples[i].group for i in keep], n_lv)
    lv = np.repeat(levels, keep.size)

    def metrics(mask: np.ndarray) -> dict[str, Any]:
        out = {name: binary_metrics(y[mask], p[mask]) for name, p in answers.items()}
        return out | {"exit_rate": _exit_rates(sim.exit_index[mask], tiers)}

    every = np.ones(len(y), dtype=bool)
    return {
        "tiers": tiers, "levels": levels, "images": int(keep.size), "columns": list(answers),
        "per_group": {g: metrics(group == g) for g in sorted(set(group.tolist()))},
        "pooled": metrics(every) | {"per_level": {str(v): metrics(lv == v) for v in levels}},
    }


def score_table(report: dict[str, Any]) -> str:
    """Markdown: per held-out group (levels pooled), then pooled and per level, one column per answer."""
    cols = report["columns"]

    def cell(e: dict[str, Any]) -> str:  # recall of the positives, FPR of the negatives (MCC is in the JSON)
        parts = [f"recall {e['recall']:.3f}"] if e.get("positives") else []
        return " / ".join(parts + ([f"FPR {e['fpr']:.3f}"] if e.get("negatives") else []))

    lines = ["| held out | n | " + " | ".join(cols) + " | cascade exit rates |", "|" + "---|" * (len(cols) + 3)]
    rows = [*report["per_group"].items(), ("**pooled**", report["pooled"])]
    rows += [(f"level {k}", v) for k, v in report["pooled"]["per_level"].items()]
    for name, e in rows:
        ex = ", ".join(f"{k} {v:.2f}" for k, v in e["exit_rate"].items())
        lines.append(f"| {name} | {e[cols[0]]['n']} | " + " | ".join(cell(e[c]) for c in cols) + f" | {ex} |")
    return "\n".join(lines)
