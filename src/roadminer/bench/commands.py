"""``roadminer bench``: throughput/latency of the fast tier, the miner over loopback HTTP and the
reference-style baseline, in one run on one device."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        device: str = typer.Option("auto", "--device", help="cpu, cuda or auto (cuda when available)"),
        out: Path | None = typer.Option(None, "--out", help="write the full results as JSON"),
        quick: bool = typer.Option(False, "--quick", help="fewer batch sizes, images and requests"),
        batch_sizes: str | None = typer.Option(None, "--batch-sizes", help="comma list, e.g. 1,8,64,256"),
        seconds: float = typer.Option(2.0, "--seconds", help="measuring time per batch size"),
        baseline_images: int = typer.Option(100, "--baseline-images", help="images through the baseline"),
        http_requests: int = typer.Option(400, "--http-requests", help="requests per concurrency level"),
        skip: str = typer.Option("", "--skip", help="comma list of parts to skip: fast,http,baseline,decode"),
        cpu_variants: str = typer.Option("torch,onnx,onnx-int8", "--cpu-variants",
                                         help="CPU engines to compare: torch,onnx,onnx-int8"),
    ) -> None:
        """Benchmark the fast path against the reference miner's ViT pipeline (same device, same run)."""
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from roadminer.bench.harness import BenchConfig, render, run_bench

        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda"):
            raise typer.BadParameter("--device must be cpu, cuda or auto")
        cfg = BenchConfig(
            device=device, quick=quick, seconds=seconds, baseline_images=baseline_images,
            http_requests=http_requests,
            batch_sizes=tuple(int(x) for x in batch_sizes.split(",")) if batch_sizes else None,
            skip=tuple(x for x in skip.split(",") if x),
            cpu_variants=tuple(x for x in cpu_variants.split(",") if x),
        )
        console = Console()
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            task = progress.add_task("bench", total=None)

            def say(msg: str) -> None:
                progress.update(task, description=msg)
                progress.console.log(msg)

            result = run_bench(cfg, say)
        console.print(render(result))
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result.to_json(), indent=2, default=str))
            console.print(f"wrote {out}")
