"""``roadminer plan``: GPU memory plan of the configured cascade."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def render_plan(plan: object) -> None:
    from rich.console import Console
    from rich.table import Table

    from roadminer.deploy.planner import Plan

    assert isinstance(plan, Plan)
    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough for every column
        console = Console(width=140)
    tiers = Table(title="Tier memory (GiB)", title_justify="left")
    text_cols = ("tier", "kind", "device", "dtype")
    for col in (*text_cols, "params", "batch", "weights", "activations", "KV", "total"):
        tiers.add_column(col, justify="left" if col in text_cols else "right")
    for t in plan.tiers:
        where = f"GPU {t.gpu}" if t.gpu is not None else t.device
        tiers.add_row(
            t.name,
            t.kind,
            where,
            t.dtype,
            _count(t.params),
            str(t.batch),
            f"{t.weights_gib:.2f}",
            f"{t.activations_gib:.2f}",
            f"{t.kv_gib:.2f}",
            f"{t.total_gib:.2f}",
        )
    console.print(tiers)
    gpus = Table(title=f"GPUs ({plan.gpu_mem_gib:g} GiB each)", title_justify="left")
    for col in ("GPU", "tiers", "CUDA ctx", "used", "capacity", "free", "status"):
        gpus.add_column(col, justify="left" if col in ("GPU", "tiers", "status") else "right")
    for g in plan.gpus:
        status = "[green]ok[/green]" if g.fits else "[bold red]OVER[/bold red]"
        gpus.add_row(
            str(g.index),
            ", ".join(g.tiers) or "-",
            f"{g.overhead_gib if g.tiers else 0:.2f}",
            f"{g.used_gib:.1f}",
            f"{g.capacity_gib:.1f}",
            f"{g.free_gib:.1f}",
            status,
        )
    console.print(gpus)
    if plan.fits:
        console.print("[green]plan fits[/green]")
    else:
        for p in plan.problems:
            console.print(f"[bold red]refused:[/bold red] {p}")


def _count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def register(app: typer.Typer) -> None:
    @app.command()
    def plan(
        config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML with cascade.tiers")] = None,
        gpus: Annotated[int | None, typer.Option(help="GPUs (default: plan.gpus or detected)")] = None,
        gpu_mem: Annotated[float | None, typer.Option(help="GiB per GPU (default: plan.gpu_mem_gb)")] = None,
        batch: Annotated[int | None, typer.Option(help="override batcher.max_batch")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
    ) -> None:
        """Pack the cascade's tiers onto GPUs (weights + activations + VLM KV); exit 1 if it does not fit."""
        from roadminer.core.config import load_settings
        from roadminer.deploy.planner import make_plan

        overrides = {"batcher.max_batch": batch} if batch else {}
        try:
            settings = load_settings(config, overrides)
            result = make_plan(settings, gpus=gpus, gpu_mem_gib=gpu_mem, device="cuda")
        except (OSError, ValueError, KeyError) as e:  # pydantic's ValidationError is a ValueError
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from e
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=2))
        else:
            render_plan(result)
        if not result.fits:
            raise typer.Exit(1)
