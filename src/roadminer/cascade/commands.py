"""``roadminer cascade-fit``: stacking weights and exit thresholds on a calibration split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_OUT = Path("artifacts/consensus.json")


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
        router = EarlyExitRouter.from_config(settings.cascade)
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
