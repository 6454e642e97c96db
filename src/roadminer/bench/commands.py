"""``roadminer bench``: throughput/latency of the fast tier, the shipped cascade on each engine, the real
miner over loopback HTTP and the reference-style baseline, in one run on one device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto (cuda when available)")] = "auto",
        out: Annotated[Path | None, typer.Option("--out", help="write the full results as JSON")] = None,
        quick: Annotated[bool, typer.Option("--quick", help="fewer batch sizes, images and requests")] = False,
        batch_sizes: Annotated[str | None, typer.Option("--batch-sizes", help="comma list, e.g. 1,8,64,256")] = None,
        seconds: Annotated[float, typer.Option("--seconds", help="measuring time per batch size")] = 2.0,
        baseline_images: Annotated[int, typer.Option("--baseline-images", help="images through the baseline")] = 100,
        http_requests: Annotated[int, typer.Option("--http-requests", help="requests per concurrency level")] = 400,
        skip: Annotated[str, typer.Option(
            "--skip", help="parts to skip, comma list: fast,cascade,http,baseline,decode")] = "",
        cpu_variants: Annotated[str, typer.Option("--cpu-variants", help="CPU engines: torch,onnx,onnx-int8")] = (
            "torch,onnx,onnx-int8"
        ),
        cascade_engines: Annotated[str | None, typer.Option(
            "--cascade-engines", help="engines of the shipped cascade (default: fast,torch on CUDA; onnx,torch "
            "on a CPU)")] = None,
        images: Annotated[Path | None, typer.Option(
            "--images", help="DIR with roadwork/ + no_roadwork/: validator-parity challenges from it "
            "(default: drawn scenes)")] = None,
        http_workers: Annotated[int, typer.Option("--http-workers", help="server.workers of the measured miner")] = 1,
        redis_url: Annotated[str | None, typer.Option("--redis-url", help="Redis for --http-workers > 1")] = None,
    ) -> None:
        """Benchmark the fast path against the reference miner's ViT pipeline (same device, same run)."""
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from roadminer.bench.harness import BenchConfig, BenchError, render, run_bench

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
            cascade_engines=tuple(x for x in cascade_engines.split(",") if x) if cascade_engines else None,
            images=str(images) if images else None, http_workers=http_workers, redis_url=redis_url,
        )
        console = Console()
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            task = progress.add_task("bench", total=None)

            def say(msg: str) -> None:
                progress.update(task, description=msg)
                progress.console.log(msg)

            try:
                result = run_bench(cfg, say)
            except BenchError as e:
                progress.stop()
                typer.echo(f"bench failed: {e}", err=True)
                raise typer.Exit(1) from None
        console.print(render(result))
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result.to_json(), indent=2, default=str))
            console.print(f"wrote {out}")
