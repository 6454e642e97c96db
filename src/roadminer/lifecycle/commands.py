"""``roadminer promote``, ``roadminer distill``, ``roadminer learn`` and ``roadminer models``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file")]
ModelsOpt = Annotated[Path | None, typer.Option("--models-dir", help="model registry (learning.models_dir)")]
HeldOutOpt = Annotated[
    Path | None, typer.Option("--held-out", help="roadwork/ + no_roadwork/ folder for the gate")
]
LevelsOpt = Annotated[
    str | None, typer.Option(help="augmentation levels, e.g. 0,1,2,3 (learning.eval_levels)")
]


def _settings(config: Path | None, overrides: dict[str, Any]) -> Any:
    from roadminer.core.config import load_settings

    try:
        return load_settings(config, {k: v for k, v in overrides.items() if v is not None})
    except (OSError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e


def _levels(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        typer.echo(f"error: --levels must look like 0,1,2,3 (got {text!r})", err=True)
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    @app.command()
    def promote(
        candidate: Annotated[str, typer.Argument(help="registered version to evaluate")],
        config: ConfigOpt = None,
        models_dir: ModelsOpt = None,
        held_out: HeldOutOpt = None,
        levels: LevelsOpt = None,
        seed: Annotated[int, typer.Option(help="seed of the held-out views (same for both models)")] = 0,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="evaluate only")] = False,
        force: Annotated[bool, typer.Option("--force", help="promote even if the gate fails")] = False,
    ) -> None:
        """Candidate vs served model on a held-out set; promote if MCC does not drop and Brier holds.
        A running miner picks the promoted model up without a restart. Exit 1 when not promoted."""
        from roadminer.lifecycle.promote import promote as run_promote
        from roadminer.lifecycle.registry import ModelRegistry, RegistryError

        settings = _settings(config, {"learning.models_dir": str(models_dir) if models_dir else None})
        try:
            res = run_promote(
                settings,
                ModelRegistry(settings.learning.models_dir),
                candidate,
                held_out,
                levels=_levels(levels),
                seed=seed,
                dry_run=dry_run,
                force=force,
            )
        except (RegistryError, ValueError, OSError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from e
        typer.echo(json.dumps(res.to_json(), indent=2))
        if not res.promoted:
            raise typer.Exit(1)

    @app.command()
    def distill(
        data: Annotated[
            list[Path], typer.Option("--data", help="images to label with the teacher (repeatable)")
        ],
        student: Annotated[
            str | None, typer.Option(help="student tier name (default: learning.tier)")
        ] = None,
        teacher: Annotated[
            str | None, typer.Option(help="teacher tier name; default the full cascade")
        ] = None,
        config: ConfigOpt = None,
        models_dir: ModelsOpt = None,
        levels: LevelsOpt = None,
        alpha: Annotated[
            float, typer.Option(help="weight of known labels in the target (0 = teacher only)")
        ] = 0.5,
        work_dir: Annotated[Path | None, typer.Option(help="scratch folder")] = None,
        then_promote: Annotated[
            bool, typer.Option("--promote", help="run the promotion gate afterwards")
        ] = False,
        held_out: HeldOutOpt = None,
    ) -> None:
        """Teacher soft labels -> fast student tier; registers the student as a candidate."""
        from roadminer.lifecycle.distill import distill as run_distill
        from roadminer.lifecycle.loop import loop_tier
        from roadminer.lifecycle.promote import promote as run_promote
        from roadminer.lifecycle.registry import ModelRegistry, RegistryError
        from roadminer.training.data import DatasetError, load_many

        settings = _settings(config, {"learning.models_dir": str(models_dir) if models_dir else None})
        registry = ModelRegistry(settings.learning.models_dir)
        try:
            samples = load_many(data)
            tier = student or loop_tier(settings)[0]
            work = work_dir or Path(settings.learning.work_dir) / "distill"
            card = run_distill(
                settings,
                registry,
                samples,
                tier,
                work,
                teacher or settings.learning.teacher_tier,
                levels=_levels(levels) or settings.learning.eval_levels,
                alpha=alpha,
            )
            out: dict[str, Any] = {"candidate": card.to_json()}
            if then_promote:
                out["promotion"] = run_promote(settings, registry, card.version, held_out).to_json()
        except (DatasetError, RegistryError, ValueError, OSError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from e
        typer.echo(json.dumps(out, indent=2, default=str))

    @app.command()
    def learn(
        every: Annotated[str, typer.Option(help="interval between iterations: 6h, 30m, 90s")] = "6h",
        once: Annotated[bool, typer.Option("--once", help="one iteration, then exit")] = False,
        iterations: Annotated[int | None, typer.Option(help="stop after this many iterations")] = None,
        config: ConfigOpt = None,
        models_dir: ModelsOpt = None,
        held_out: HeldOutOpt = None,
    ) -> None:
        """Unattended loop: mine the hard-example queue -> train a candidate -> promotion gate."""
        from roadminer.lifecycle.loop import LearningLoop, parse_every

        settings = _settings(
            config,
            {
                "learning.models_dir": str(models_dir) if models_dir else None,
                "learning.held_out": str(held_out) if held_out else None,
            },
        )
        try:
            every_s = parse_every(every)
        except ValueError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from e
        loop = LearningLoop(settings)
        reports = asyncio.run(loop.run_forever(every_s, 1 if once else iterations))
        for rep in reports:
            typer.echo(json.dumps(rep.to_json(), default=str))

    @app.command()
    def models(config: ConfigOpt = None, models_dir: ModelsOpt = None) -> None:
        """List the model registry: versions, status, held-out metrics, and what each tier serves."""
        from roadminer.lifecycle.registry import ModelRegistry

        settings = _settings(config, {"learning.models_dir": str(models_dir) if models_dir else None})
        reg = ModelRegistry(settings.learning.models_dir)
        rows = [
            {
                "version": c.version,
                "tier": c.tier,
                "kind": c.kind,
                "status": c.status,
                "parent": c.parent,
                "held_out": {k: c.metrics.get("held_out", {}).get(k) for k in ("mcc", "brier")},
            }
            for c in reg.list()
        ]
        typer.echo(
            json.dumps({"serving": reg.current(), "generation": reg.generation(), "versions": rows}, indent=2)
        )
