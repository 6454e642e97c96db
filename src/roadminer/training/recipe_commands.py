"""``roadminer train-recipe`` (one command re-makes a shipped classifier from ``configs/train/*.yaml``) and
``roadminer export-data`` (the downsized training copy a recipe names). Heavy imports happen inside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def _counts(items: list[str] | None, option: str) -> dict[str, int]:
    from roadminer.core.cli_args import parse_sets

    try:
        return {k: int(v) for k, v in parse_sets(items, option).items()}
    except (TypeError, ValueError) as e:
        raise typer.BadParameter(f"{option} expects SOURCE=N: {e}") from None


def register(app: typer.Typer) -> None:
    @app.command("export-data")
    def export_data(
        src: Annotated[Path, typer.Argument(help="the full dataset (image folder + manifest)")],
        dst: Annotated[Path, typer.Argument(help="where the copy goes")],
        short_side: Annotated[int, typer.Option("--short-side")] = 224,
        quality: Annotated[int, typer.Option("--quality")] = 60,
        fmt: Annotated[str, typer.Option("--format", help="JPEG or WEBP")] = "WEBP",
        max_per_source: Annotated[list[str] | None, typer.Option("--max", help="SOURCE=N seeded subset")] = None,
        every_nth: Annotated[list[str] | None, typer.Option("--every", help="SOURCE=N every n-th frame")] = None,
        seed: Annotated[int, typer.Option("--seed")] = 0,
    ) -> None:
        """Write a smaller copy of a labelled dataset (images, boxes, manifest) for a training machine."""
        from roadminer.training.data import export_downsized

        info = export_downsized(src, dst, short_side, quality, max_per_source=_counts(max_per_source, "--max"),
                                every_nth=_counts(every_nth, "--every"), seed=seed, fmt=fmt.upper())
        typer.echo(json.dumps({"n": info["n"], "mib": round(info["bytes"] / 2**20, 1), "counts": info["counts"]}))

    @app.command("train-recipe")
    def train_recipe_cmd(
        recipe: Annotated[Path, typer.Argument(help="configs/train/NAME.yaml")],
        data: Annotated[Path, typer.Option("--data", help="the full dataset (exported as the recipe says)")],
        out: Annotated[Path, typer.Option("--out", help="model file to write (.safetensors)")],
        cv: Annotated[
            list[str] | None,
            typer.Option("--cv", help="source | group:SOURCE (repeatable): out-of-fold runs before the final fit"),
        ] = None,
        report: Annotated[
            Path | None, typer.Option("--report", help="prefix of the CV outputs (PREFIX-source.json, ...)")
        ] = None,
        prepared: Annotated[
            bool, typer.Option("--prepared", help="--data already is the recipe's training copy")
        ] = False,
        device: Annotated[str, typer.Option("--device")] = "auto",
        workers: Annotated[int | None, typer.Option("--workers", help="render processes (default: cores)")] = None,
        max_steps: Annotated[int | None, typer.Option("--max-steps", help="cap fit steps (smoke runs)")] = None,
        no_final: Annotated[bool, typer.Option("--no-final", help="only the CV runs")] = False,
        init: Annotated[
            str | None,
            typer.Option("--init", help="detector recipes: starting weights (.safetensors, '' = none)"),
        ] = None,
        parallel: Annotated[int | None, typer.Option("--parallel", help="detector trainings at once")] = None,
        eval_data: Annotated[
            Path | None,
            typer.Option("--eval-data", help="score the CV on views rendered from this copy of the same images "
                         "(e.g. the full-size dataset, as validators render theirs); default: the training copy"),
        ] = None,
    ) -> None:
        """Re-make a shipped model from a recipe file. A classifier: data copy, seeded view bank, CV folds,
        final fit, card. A detector (``detector:`` section): leave-one-source-out detectors on the same
        evaluation views (``--cv source``), the shipped detector and its head, card."""
        from roadminer.training.recipe import DetectorRecipe, load_recipe
        from roadminer.training.recipe_run import EvalCopyError, prepare_data, run_recipe

        try:
            rec = load_recipe(recipe)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from e
        from roadminer.training.data import DatasetError

        if isinstance(rec, DetectorRecipe):
            from roadminer.training.detector_recipe import run_detector_recipe

            unknown = [c for c in cv or [] if c != "source"]
            if unknown:
                raise typer.BadParameter(f"detector recipes cross-validate by source only, not {unknown}")
            if eval_data is not None:
                raise typer.BadParameter("classifier recipes only", param_hint="--eval-data")
            try:
                root = data if prepared else prepare_data(rec, data, out.parent)
                summary = run_detector_recipe(
                    rec, root, out, cv=bool(cv), report=report, init=init, device=device,
                    workers=workers if workers is not None else rec.workers, parallel=parallel,
                    recipe_path=recipe,
                )
            except (DatasetError, FileNotFoundError) as e:
                raise typer.BadParameter(str(e)) from None
            typer.echo(json.dumps(summary, indent=1))
            return
        try:
            summary = run_recipe(
                rec, data, out, cv=cv or [], report=report, prepared=prepared, device=device,
                workers=workers if workers is not None else rec.workers, max_steps=max_steps, final=not no_final,
                recipe_path=recipe, eval_data=eval_data,
            )
        except (DatasetError, FileNotFoundError) as e:
            hint = "--eval-data" if isinstance(e, EvalCopyError) else "--data"
            raise typer.BadParameter(str(e), param_hint=hint) from None
        typer.echo(json.dumps(summary, indent=1))
