"""The cascade's commands: ``roadminer eval`` (the configured cascade on labelled images at validator
augmentation levels, or grouped CV of the train settings), ``roadminer cascade-fit`` (stacking weights and
exit thresholds on a calibration split, running the tiers) and ``roadminer cascade-stack`` (the same from
out-of-fold predictions, leave-one-source-out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_OUT = Path("artifacts/consensus.json")


def _tier_files(items: list[str]) -> list[tuple[str, Path]]:
    """``--tier NAME=PATH`` options as (name, path) pairs, in the order given."""
    pairs = []
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"--tier expects NAME=PATH, got {item!r}")
        name, path = item.split("=", 1)
        pairs.append((name.strip(), Path(path)))
    return pairs


def register(app: typer.Typer) -> None:
    @app.command("cascade-fit")
    def cascade_fit(
        images: Annotated[list[Path], typer.Option("--images", help="dataset folder(s)/parquet")],
        config: Annotated[Path | None, typer.Option("--config", help="YAML config (cascade section)")] = None,
        out: Annotated[Path, typer.Option("--out", help="consensus JSON to write")] = DEFAULT_OUT,
        holdout: Annotated[float, typer.Option("--holdout", help="share of groups for calibration")] = 0.15,
        all_rows: Annotated[bool, typer.Option("--all", help="every row, not only the hold-out")] = False,
        level: Annotated[int, typer.Option("--level", help="validator augmentation level")] = 1,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        limit: Annotated[int | None, typer.Option("--limit", help="at most this many images")] = None,
        tolerance: Annotated[float, typer.Option("--tolerance", help="MCC the cascade may lose")] = 0.0,
        no_stacking: Annotated[bool, typer.Option("--no-stacking", help="keep configured weights")] = False,
        vlm: Annotated[bool, typer.Option("--vlm", help="include the VLM tiers")] = False,
    ) -> None:
        """Run every tier on a calibration split, fit stacking weights and exit thresholds, write JSON."""
        import numpy as np

        from roadminer.cascade.fit import collect_tier_outputs, fit_cascade
        from roadminer.cascade.router import EarlyExitRouter
        from roadminer.core.config import load_settings
        from roadminer.imaging.decode import ImagePolicy, decode_rgb, encode_jpeg
        from roadminer.imaging.views import augment_view
        from roadminer.training.data import holdout_split, load_many

        settings = load_settings(config, {"cascade.vlm": True} if vlm else None)
        samples = load_many(images)
        idx = np.arange(len(samples)) if all_rows else holdout_split(samples, holdout, seed)[1]
        if limit is not None:
            idx = np.random.default_rng(seed).permutation(idx)[:limit]
        rng = np.random.default_rng(seed)
        rgb, payloads, labels = [], [], []
        for i in idx:
            payload = encode_jpeg(augment_view(samples[i].read_pil(), level, rng))
            payloads.append(payload)
            rgb.append(decode_rgb(payload, ImagePolicy()))
            labels.append(samples[i].label)
        router = EarlyExitRouter.from_settings(settings)
        router.warmup()
        probs, cost = collect_tier_outputs(router, rgb, payloads)
        ok = np.all(np.isfinite(probs), axis=1)
        names = [t.name for t in router.tiers]
        params, _ = fit_cascade(probs[ok], np.array(labels)[ok], names, stacking=not no_stacking,
                                  weights=router.weights, tolerance=tolerance, tier_cost=cost.tolist())
        params.report["tier_seconds_per_image"] = dict(zip(names, cost.tolist(), strict=True))
        params.save(out)
        typer.echo(json.dumps(params.report, indent=2))
        typer.echo(f"wrote {out}; set cascade.consensus_file to use it")

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
        regression: Annotated[
            int | None,
            typer.Option("--regression-sample", help="only the fixed regression sample: N images per source and label"),
        ] = None,
        record: Annotated[
            Path | None,
            typer.Option("--record", help="with --regression-sample: write the figure into this card"),
        ] = None,
    ) -> None:
        """Evaluate the configured cascade on labelled images at validator augmentation levels."""
        import numpy as np

        from roadminer.core.cli_args import jsonable, parse_levels, parse_sets
        from roadminer.core.config import load_settings
        from roadminer.training.cv import CV_GROUPS, run_cv
        from roadminer.training.data import DatasetError, load_dataset

        if cv is not None and cv not in CV_GROUPS:
            raise typer.BadParameter("--cv must be 'source' or 'group'")
        if record is not None and (regression is None or cv is not None or limit is not None):
            raise typer.BadParameter("--record needs --regression-sample (and no --cv or --limit: the guard "
                                     "re-draws the whole sample)", param_hint="--record")
        if record is not None and not record.is_file():
            raise typer.BadParameter(f"{record}: no such card", param_hint="--record")

        lv = parse_levels(levels)
        settings = load_settings(config, parse_sets(sets))
        try:
            samples = load_dataset(images)
        except DatasetError as e:
            raise typer.BadParameter(str(e)) from None
        if regression is not None:
            from roadminer.training.evaluate import regression_sample

            samples = regression_sample(samples, regression)
        if limit is not None and limit < len(samples):
            idx = np.random.default_rng(seed).choice(len(samples), limit, replace=False)
            samples = [samples[i] for i in sorted(idx)]
        if cv:
            result = run_cv(samples, settings, cv, lv)
        else:
            from roadminer.cascade.router import EarlyExitRouter
            from roadminer.training.evaluate import evaluate_router

            router = EarlyExitRouter.from_settings(settings)
            result = evaluate_router(router, samples, lv, seed=seed, batch_size=batch_size)
            result["cascade"] = router.describe()
        result = jsonable(result)
        text = json.dumps(result, indent=2)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text + "\n")
        summary = {k: result.get(k) for k in ("n", "mcc", "accuracy", "auc", "brier")}
        if record is not None:
            card = json.loads(record.read_text())
            card["regression_sample"] = {
                "per_cell": regression, "n": len(samples), "seed": seed, "levels": lv,
                "mcc": round(float(result["mcc"]), 4), "accuracy": round(float(result["accuracy"]), 4),
                "cascade": router.version,
                "note": "same-data figure: these photos are in the training set; the test guards against "
                        "regressions, it is not a quality estimate",
            }
            record.write_text(json.dumps(card, indent=1) + "\n")
            summary["recorded"] = str(record)
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

    @app.command("bonnet-probe")
    def bonnet_probe(
        images: Annotated[Path, typer.Option("--images", help="labelled dataset (negatives and donor frames)")],
        donor: Annotated[str, typer.Option("--donor", help="source whose frames lend their bottom strip")] = "wzcity",
        height: Annotated[float, typer.Option("--height", help="strip height, share of the image")] = 0.12,
        levels: Annotated[str, typer.Option("--levels")] = "0,3",
        seed: Annotated[int, typer.Option("--seed", help="view seed")] = 5,
        sources: Annotated[
            list[str] | None, typer.Option("--source", help="negatives of this source (repeatable; default: all "
                                           "but the donor)")
        ] = None,
        not_in: Annotated[
            Path | None, typer.Option("--not-in", help="skip negatives that are in this training copy (unseen only)")
        ] = None,
        max_per_source: Annotated[int, typer.Option("--max-per-source", help="seeded sample per source")] = 300,
        out: Annotated[Path | None, typer.Option("--out", help="write the JSON report here")] = None,
        config: Annotated[Path | None, typer.Option("--config")] = None,
        sets: Annotated[list[str] | None, typer.Option("--set", help="dotted overrides")] = None,
    ) -> None:
        """Does the cascade answer road work because of a car's bonnet? False-positive rate on negatives as they
        are and with the bottom strip of a donor source's frames (windshield video) pasted in."""
        import numpy as np

        from roadminer.cascade.router import EarlyExitRouter
        from roadminer.core.cli_args import jsonable, parse_levels, parse_sets
        from roadminer.core.config import load_settings
        from roadminer.training.data import DatasetError, load_dataset
        from roadminer.training.evaluate import strip_probe

        if not 0 < height <= 0.5:
            raise typer.BadParameter("--height is a share of the image height: 0 < h <= 0.5", param_hint="--height")
        if max_per_source < 1:
            raise typer.BadParameter("--max-per-source needs at least 1", param_hint="--max-per-source")
        lv = parse_levels(levels)
        settings = load_settings(config, parse_sets(sets))
        try:
            samples = load_dataset(images)
            seen = {Path(s.name).stem for s in load_dataset(not_in)} if not_in is not None else set()
        except DatasetError as e:
            raise typer.BadParameter(str(e)) from None
        donors = [s for s in samples if s.source == donor]
        if not donors:
            raise typer.BadParameter(f"no frames of source {donor!r} in {images}", param_hint="--donor")
        wanted = set(sources) if sources else {s.source for s in samples} - {donor}
        rng = np.random.default_rng(seed)
        negatives = []
        for src in sorted(wanted):
            pool = [s for s in samples if s.source == src and s.label == 0 and Path(s.name).stem not in seen]
            if len(pool) > max_per_source:
                pool = [pool[i] for i in sorted(rng.choice(len(pool), max_per_source, replace=False))]
            negatives.extend(pool)
        if not negatives:
            raise typer.BadParameter(f"no unseen negatives of {sorted(wanted)}", param_hint="--source")
        router = EarlyExitRouter.from_settings(settings)
        result = jsonable(strip_probe(router, negatives, donors, height, lv, seed))
        result["cascade"] = router.version
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
        typer.echo(json.dumps(result))

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
        threshold: Annotated[
            str,
            typer.Option("--threshold", help="mcc: move each stage's bias onto the out-of-fold MCC-best threshold; "
                         "fit: keep the class-balanced logistic fit's own bias"),
        ] = "mcc",
    ) -> None:
        """Fit stacking weights + exit thresholds from out-of-fold predictions; report them leave-one-source-out."""
        if threshold not in ("mcc", "fit"):
            raise typer.BadParameter(f"--threshold is mcc or fit, not {threshold!r}")
        from roadminer.cascade.stack import level_table, stack_from_oof, summary_table
        from roadminer.core.cli_args import jsonable, parse_sets
        from roadminer.training.data import DatasetError, load_dataset

        pairs = _tier_files(tiers)
        costs = {k: float(v) for k, v in parse_sets(cost, "--cost").items()}
        tier_cost = [costs.get(n, 0.0) for n, _ in pairs] if costs else None
        try:
            samples = load_dataset(images)
            params, rep = stack_from_oof(samples, pairs, tolerance=tolerance, tier_cost=tier_cost,
                                         mcc_threshold=threshold == "mcc")
        except (DatasetError, ValueError, KeyError) as e:
            raise typer.BadParameter(str(e)) from None
        params.save(out)
        if report is not None:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps(jsonable(rep), indent=2) + "\n")
        typer.echo(summary_table(rep))
        typer.echo(level_table(rep))
        typer.echo(json.dumps({"exit_confidence": params.exit_confidence, "exit_rate": rep["cascade"]["exit_rate"]}))
        typer.echo(f"wrote {out}")

    @app.command("cascade-score")
    def cascade_score(
        images: Annotated[Path, typer.Option("--images", help="the dataset the CV files scored")],
        tiers: Annotated[
            list[str], typer.Option("--tier", help="NAME=CV.json of a grouped CV, in cascade order")
        ],
        consensus: Annotated[
            Path | None, typer.Option("--consensus", help="a fitted consensus JSON (default: the shipped one)")
        ] = None,
        report: Annotated[Path | None, typer.Option("--report", help="full report JSON")] = None,
    ) -> None:
        """Replay a fitted consensus (stage 0, exits, stacking) on the out-of-fold answers of a grouped CV such as
        ``train-recipe --cv group:wzcity``: per held-out group, pooled and per level, each tier raw and the cascade."""
        from roadminer.cascade.consensus import ConsensusParams
        from roadminer.cascade.stack import score_oof, score_table
        from roadminer.core.cli_args import jsonable
        from roadminer.core.config import ASSETS_DIR
        from roadminer.training.data import DatasetError, load_dataset

        consensus = consensus or ASSETS_DIR / "models" / "cascade_consensus.json"

        pairs = _tier_files(tiers)
        try:
            params = ConsensusParams.load(consensus)
            rep = score_oof(load_dataset(images), pairs, params)
        except (DatasetError, ValueError, KeyError, OSError) as e:
            raise typer.BadParameter(str(e)) from None
        if report is not None:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps(jsonable(rep), indent=2) + "\n")
        typer.echo(score_table(rep))
