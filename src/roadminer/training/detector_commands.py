"""``roadminer train-detector``: train the YOLO detector tier (kind ``yolo``) on a dataset's boxes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("train-detector")
    def train_detector_cmd(
        data: Annotated[Path, typer.Option("--data", help="image folder with labels/ (YOLO boxes) and manifest.csv")],
        out: Annotated[Path, typer.Option("--out", help="output stem: writes OUT.safetensors and OUT.card.json")],
        model: Annotated[str, typer.Option(help="ultralytics architecture yaml (random init)")] = "yolo11n.yaml",
        epochs: Annotated[int, typer.Option(help="training epochs")] = 30,
        time_min: Annotated[float | None, typer.Option("--time-min", help="stop after this many minutes")] = None,
        imgsz: Annotated[int, typer.Option(help="square training/inference size (multiple of 32)")] = 256,
        batch: Annotated[int, typer.Option(help="batch size")] = 32,
        device: Annotated[str, typer.Option(help="cpu, 0, 0,1 ...")] = "cpu",
        workers: Annotated[int, typer.Option(help="data-loader workers")] = 2,
        seed: Annotated[int, typer.Option(help="split and training seed")] = 0,
        val_frac: Annotated[float, typer.Option(help="share of each source's groups held out")] = 0.2,
        holdout: Annotated[str, typer.Option(help="comma-separated sources held out entirely, e.g. rcone")] = "",
        max_negatives: Annotated[int, typer.Option(help="negatives kept per source and split (0: all)")] = 200,
        work_dir: Annotated[Path | None, typer.Option(help="scratch folder (dataset, ultralytics runs)")] = None,
    ) -> None:
        """Build a YOLO dataset (square crops, grouped split), train, report mAP50 per class and the tier's
        image-level AUC/MCC on the held-out groups; the card beside the weights records its sha256."""
        if not data.is_dir():
            typer.echo(f"error: --data {data} is not a folder", err=True)
            raise typer.Exit(2)
        if imgsz % 32:
            typer.echo("error: --imgsz must be a multiple of 32", err=True)
            raise typer.Exit(2)
        if not model.endswith((".yaml", ".yml")):
            typer.echo("error: --model must be an ultralytics architecture yaml (no .pt: those are pickles)", err=True)
            raise typer.Exit(2)
        try:
            from roadminer.training.detector_train import train_detector
        except ImportError as e:
            typer.echo(f"error: {e} (install the train extra: pip install 'roadminer[train]')", err=True)
            raise typer.Exit(2) from e
        from roadminer.training.data import DatasetError

        try:
            card = train_detector(
                data,
                out,
                work_dir=work_dir,
                model=model,
                epochs=epochs,
                time_min=time_min,
                imgsz=imgsz,
                batch=batch,
                device=device,
                workers=workers,
                seed=seed,
                val_frac=val_frac,
                holdout_sources=[s.strip() for s in holdout.split(",") if s.strip()],
                max_negatives_per_source=max_negatives or None,
            )
        except DatasetError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from e
        typer.echo(json.dumps({"weights": card["weights"], "sha256": card["sha256"], **card["metrics"]}, indent=2))
