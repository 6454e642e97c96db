"""``roadminer train`` and ``roadminer eval``. Heavy imports (torch) happen inside the commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer


def _parse_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"levels must be comma-separated integers, got {text!r}") from None
    if not levels or any(lv not in (0, 1, 2, 3) for lv in levels):
        raise typer.BadParameter("levels must be among 0,1,2,3")
    return levels


def _parse_sets(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items() if not isinstance(v, np.ndarray)}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def register(app: typer.Typer) -> None:
    register_stack(app)

    @app.command("train")
    def train_cmd(
        data: Annotated[list[Path], typer.Option("--data", help="image folder / parquet (repeatable)")],
        out: Annotated[Path, typer.Option("--out", help="output folder (model + card)")] = Path(
            "models/roadwork"
        ),
        config: Annotated[Path | None, typer.Option("--config", help="YAML settings (train.* keys)")] = None,
        extra: Annotated[list[Path] | None, typer.Option("--extra", help="extra labelled folders")] = None,
        init: Annotated[
            Path | None, typer.Option("--init", help="saved classifier to fine-tune from")
        ] = None,
        calibration_from: Annotated[
            Path | None,
            typer.Option("--calibration-from", help="JSON of `eval --cv`: its out-of-fold calibration"),
        ] = None,
        arch: Annotated[str | None, typer.Option("--arch")] = None,
        epochs: Annotated[int | None, typer.Option("--epochs")] = None,
        device: Annotated[str | None, typer.Option("--device")] = None,
        workers: Annotated[int | None, typer.Option("--workers")] = None,
        seed: Annotated[int | None, typer.Option("--seed")] = None,
        sets: Annotated[list[str] | None, typer.Option("--set", help="train.KEY=VALUE (JSON values)")] = None,
        from_queue: Annotated[
            bool,
            typer.Option(
                "--from-queue",
                help="also train on the hard-example queue: labelled examples, plus teacher pseudo-labels "
                "for unlabelled ones when learning.teacher_tier is set (the exported entries are acknowledged)",
            ),
        ] = False,
        queue_dir: Annotated[
            Path | None,
            typer.Option("--queue-dir", help="where --from-queue exports the queue (default OUT/hard_examples)"),
        ] = None,
        redis_url: Annotated[
            str | None, typer.Option("--redis-url", help="the queue's Redis (default: state.* settings)")
        ] = None,
    ) -> None:
        """Fine-tune the roadwork classifier on validator-parity views; write model.safetensors + card."""
        from roadminer.core.config import load_settings
        from roadminer.training.train import train

        overrides = {f"train.{k}": v for k, v in _parse_sets(sets).items()}
        for key, val in (
            ("arch", arch),
            ("epochs", epochs),
            ("device", device),
            ("workers", workers),
            ("seed", seed),
        ):
            if val is not None:  # an unset option must not clear a --set value
                overrides[f"train.{key}"] = val
        if redis_url:
            overrides |= {"state.backend": "redis", "state.redis_url": redis_url}
        settings = load_settings(config, overrides)
        extra_dirs = list(extra or [])
        if from_queue:
            import asyncio

            from roadminer.lifecycle.loop import export_for_training

            qdir = queue_dir if queue_dir is not None else out / "hard_examples"
            report = asyncio.run(export_for_training(settings, qdir))
            typer.echo(json.dumps({"queue_export": report.to_json()}))
            if report.written.get("roadwork", 0) + report.written.get("no_roadwork", 0) > 0:
                extra_dirs.append(qdir)
            else:
                typer.echo("no labelled hard examples in the queue; training on --data only", err=True)
        calibration = None
        card_extra = None
        if calibration_from is not None:
            cv = json.loads(calibration_from.read_text())
            calibration = cv["calibration"]
            card_extra = {"grouped_cv": cv.get("report"), "colour_baseline_cv": cv.get("colour_baseline")}
        card = train(
            data,
            out,
            settings.train,
            extra_dirs=extra_dirs,
            init_checkpoint=init,
            calibration=calibration,
            card_extra=card_extra,
        )
        cal = card["calibration"]
        typer.echo(
            json.dumps(
                {
                    "out": str(out),
                    "version": card["version"],
                    "temperature": cal.get("temperature"),
                    "bias": cal.get("bias"),
                    "threshold": cal.get("threshold"),
                }
            )
        )

    @app.command("eval")
    def eval_cmd(
        images: Annotated[Path, typer.Option("--images", help="roadwork/ + no_roadwork/ folder, or parquet")],
        levels: Annotated[str, typer.Option("--levels")] = "0,1,2,3",
        seed: Annotated[int, typer.Option("--seed")] = 0,
        out: Annotated[Path | None, typer.Option("--out", help="write the JSON report here")] = None,
        config: Annotated[Path | None, typer.Option("--config")] = None,
        cv: Annotated[
            str | None, typer.Option("--cv", help="grouped CV of the train settings: 'source' or 'group' out")
        ] = None,
        limit: Annotated[int | None, typer.Option("--limit", help="at most N images (seeded sample)")] = None,
        batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
        sets: Annotated[
            list[str] | None, typer.Option("--set", help="dotted overrides, e.g. cascade.bias=0.1")
        ] = None,
    ) -> None:
        """Evaluate the configured cascade on labelled images at validator augmentation levels."""
        import numpy as np

        from roadminer.core.config import load_settings
        from roadminer.training.data import DatasetError, load_dataset

        lv = _parse_levels(levels)
        settings = load_settings(config, _parse_sets(sets))
        try:
            samples = load_dataset(images)
        except DatasetError as e:
            raise typer.BadParameter(str(e)) from None
        if limit is not None and limit < len(samples):
            idx = np.random.default_rng(seed).choice(len(samples), limit, replace=False)
            samples = [samples[i] for i in sorted(idx)]
        if cv:
            result = run_cv(samples, settings, cv, lv)
        else:
            from roadminer.cascade.router import EarlyExitRouter
            from roadminer.training.evaluate import evaluate_router

            router = EarlyExitRouter.from_config(settings.cascade)
            result = evaluate_router(router, samples, lv, seed=seed, batch_size=batch_size)
            result["cascade"] = router.describe()
        result = _jsonable(result)
        text = json.dumps(result, indent=2)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text + "\n")
        summary = {k: result.get(k) for k in ("n", "mcc", "accuracy", "auc", "brier")}
        if cv:
            rep = result["report"]
            summary = {
                "pooled": {k: rep["pooled"].get(k) for k in ("mcc", "auc", "brier")},
                "dashcam": {k: rep.get("dashcam_pooled", {}).get(k) for k in ("mcc", "auc")},
                "calibration": {
                    k: result["calibration"].get(k) for k in ("temperature", "bias", "threshold")
                },
            }
        typer.echo(json.dumps(summary))


def register_stack(app: typer.Typer) -> None:
    @app.command("cascade-stack")
    def cascade_stack(
        images: Annotated[Path, typer.Option("--images", help="the dataset the CV files scored")],
        tiers: Annotated[
            list[str],
            typer.Option("--tier", help="NAME=CV.json, in cascade order (oof_logits or oof_probs per level)"),
        ],
        out: Annotated[Path, typer.Option("--out", help="consensus JSON to write")] = Path(
            "artifacts/consensus.json"
        ),
        report: Annotated[Path | None, typer.Option("--report", help="full report JSON")] = None,
        cost: Annotated[
            list[str] | None, typer.Option("--cost", help="NAME=seconds per image (relative cost in the report)")
        ] = None,
        tolerance: Annotated[float, typer.Option("--tolerance", help="MCC the cascade may lose")] = 0.0,
    ) -> None:
        """Fit stacking weights + exit thresholds from out-of-fold predictions; report them leave-one-source-out."""
        from roadminer.cascade.stack import level_table, stack_from_oof, summary_table
        from roadminer.training.data import DatasetError, load_dataset

        pairs = []
        for item in tiers:
            if "=" not in item:
                raise typer.BadParameter(f"--tier expects NAME=PATH, got {item!r}")
            name, path = item.split("=", 1)
            pairs.append((name.strip(), Path(path)))
        costs = {k: float(v) for k, v in _parse_sets(cost).items()}
        tier_cost = [costs.get(n, 0.0) for n, _ in pairs] if costs else None
        try:
            samples = load_dataset(images)
            params, rep = stack_from_oof(samples, pairs, tolerance=tolerance, tier_cost=tier_cost)
        except (DatasetError, ValueError, KeyError) as e:
            raise typer.BadParameter(str(e)) from None
        params.save(out)
        if report is not None:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps(_jsonable(rep), indent=2) + "\n")
        typer.echo(summary_table(rep))
        typer.echo(level_table(rep))
        typer.echo(json.dumps({"exit_confidence": params.exit_confidence, "exit_rate": rep["cascade"]["exit_rate"]}))
        typer.echo(f"wrote {out}")


def run_cv(samples: list, settings: Any, by: str, levels: list[int]) -> dict[str, Any]:
    """Leave-one-``by``-out CV of the classifier (``settings.train``) with the colour cue beside it, plus a
    calibration fitted on the out-of-fold logits (each logit comes from a model that never saw its group)."""
    import numpy as np

    from roadminer.training.calibrate import fit_calibration
    from roadminer.training.colour_fit import fit_colour_cue
    from roadminer.training.train import cross_validate

    if by not in ("source", "group"):
        raise typer.BadParameter("--cv must be 'source' or 'group'")
    cfg = settings.train.model_copy(update={"levels": levels})
    res = cross_validate(samples, cfg, by=by)
    oof = res["oof_logits"]
    y = np.tile([s.label for s in samples], len(levels))
    calibration = fit_calibration(oof.reshape(-1), y)
    t, b, thr = calibration["temperature"], calibration["bias"], calibration["threshold"]
    shift = -np.log(thr / (1 - thr))
    from roadminer.training.evaluate import loso_report

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
