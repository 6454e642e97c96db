"""Model card: the JSON written by ``roadminer train`` rendered as markdown (data, grouped CV, calibration)."""

from __future__ import annotations

from typing import Any

SOURCE_ORDER = ("tracon", "rcone", "kagan", "pranav", "camvid", "gtsdb")


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _main_metric(entry: dict[str, Any]) -> str:
    if entry.get("positives") and entry.get("negatives"):
        return f"MCC {_fmt(entry.get('mcc'))}, AUC {_fmt(entry.get('auc'))}"
    if entry.get("positives"):
        return f"recall {_fmt(entry.get('recall'))}"
    return f"FPR {_fmt(entry.get('fpr'))}"


def cv_table(report: dict[str, Any], colour: dict[str, Any] | None) -> list[str]:
    levels = [str(lv) for lv in report.get("levels", [])]
    head = "| held-out source | n | classifier (levels pooled) | " + " | ".join(f"level {lv}" for lv in levels)
    head += " | colour cue |"
    lines = [head, "|" + "---|" * (4 + len(levels))]
    per = report["per_source"]
    for src in [s for s in SOURCE_ORDER if s in per] + [s for s in per if s not in SOURCE_ORDER]:
        e = per[src]
        cells = [src, str(e["n"] // max(1, len(levels))), _main_metric(e)]
        cells += [_main_metric(e["per_level"][lv]) for lv in levels]
        c = (colour or {}).get("per_source", {}).get(src)
        cells.append(_main_metric(c) if c else "–")
        lines.append("| " + " | ".join(cells) + " |")
    for key, label in (("dashcam_pooled", "dashcam sources pooled"), ("pooled", "all pooled")):
        if key in report:
            e = report[key]
            cells = [label, str(e["n"] // max(1, len(levels))), _main_metric(e)]
            cells += [_main_metric(e["per_level"][lv]) for lv in levels]
            c = (colour or {}).get(key)
            cells.append(_main_metric(c) if c else "–")
            lines.append("| " + " | ".join(cells) + " |")
    g = per.get("gtsdb", {})
    if "sign_positives_recall" in g:
        lines.append("")
        lines.append(
            f"gtsdb: recall on sign positives {_fmt(g.get('sign_positives_recall'))}, on scene positives "
            f"{_fmt(g.get('scene_positives_recall'))}, FPR on its orange-rich negatives {_fmt(g.get('fpr'))}."
        )
    return lines


def render_markdown(card: dict[str, Any], notes: str = "") -> str:
    cal = card.get("calibration", {})
    lines = [
        f"# Model card: {card.get('name')} ({card.get('version')})",
        "",
        f"- Architecture: `{card.get('arch')}` with a one-logit head; input {card['input'].get('input_size')}x"
        f"{card['input'].get('input_size')} RGB, normalised with mean {card['input'].get('mean')} and std "
        f"{card['input'].get('std')}. Weights: safetensors, fp16.",
        "- Output: P(roadwork) = sigmoid(logit / T + b), then the decision threshold is moved onto 0.5 "
        "(the cascade's `temperature`, `bias`, `threshold`).",
        f"- Calibration (fitted on out-of-fold logits, class-balanced for the validators' 50/50 prior): "
        f"T = {_fmt(cal.get('temperature'))}, b = {_fmt(cal.get('bias'))}, threshold = {_fmt(cal.get('threshold'))}.",
    ]
    if "raw" in cal:
        lines.append(
            f"  Brier {_fmt(cal['raw'].get('brier'))} -> {_fmt(cal['final'].get('brier'))}, "
            f"ECE {_fmt(cal['raw'].get('ece'))} -> {_fmt(cal['final'].get('ece'))} (raw -> calibrated, pooled OOF)."
        )
    data = card.get("data", {})
    lines += ["", "## Training data", ""]
    lines.append(
        "roadwork-v1 (research use only; images never shipped): six public GitHub sources, see the dataset's "
        "README. Counts used for this model:"
    )
    lines += ["", "| source | roadwork | no_roadwork |", "|---|---:|---:|"]
    for src, c in data.get("counts", {}).items():
        lines.append(f"| {src} | {c.get('roadwork', 0)} | {c.get('no_roadwork', 0)} |")
    tc = card.get("train_config", {})
    lines += [
        "",
        f"Training: {tc.get('epochs')} epochs x {tc.get('samples_per_epoch')} class-balanced draws "
        f"(source share ~ count^{tc.get('source_power')}), batch {tc.get('batch_size')}, AdamW lr {tc.get('lr')}, "
        f"label smoothing {tc.get('label_smoothing')}; every image is a validator-parity view "
        f"(levels {tc.get('levels')}, then JPEG q75 at 224); copy-paste share {tc.get('copy_paste_p')}; "
        f"{card.get('train_seconds')} s on one GPU.",
    ]
    cv = card.get("grouped_cv")
    if cv:
        lines += [
            "",
            "## Leave-one-source-out cross-validation",
            "",
            "Each row: a model trained on the other five sources, tested on this one, at validator augmentation "
            "levels 0-3 (fixed seeded views). Single-label sources report recall or false-positive rate; "
            "raw (uncalibrated) probabilities, threshold 0.5. The colour-cue baseline is evaluated the same way.",
            "",
        ]
        lines += cv_table(cv, card.get("colour_baseline_cv"))
    cvc = card.get("grouped_cv_calibrated")
    if cvc:
        lines += [
            "",
            "The same out-of-fold predictions after the calibration above (temperature, bias and threshold, as "
            "the cascade applies them; fitted on these same out-of-fold logits, so slightly optimistic):",
            "",
        ]
        lines += cv_table(cvc, card.get("colour_baseline_cv"))
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"
