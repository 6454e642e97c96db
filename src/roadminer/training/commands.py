"""``roadminer train``. Heavy imports (torch) happen inside the command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
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
        sets: Annotated[list[str] | None, typer.Option("--set", help="train.KEY=VALUE (YAML values)")] = None,
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
        from roadminer.core.cli_args import parse_sets
        from roadminer.core.config import load_settings
        from roadminer.training.train import train

        # keys are train.* settings, with or without the prefix (``--set epochs=3``, ``--set train.epochs=3``)
        overrides = {k if k.startswith("train.") else f"train.{k}": v for k, v in parse_sets(sets).items()}
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
