"""``roadminer train --from-queue``: the hard-example queue (real Redis) feeds a fine-tune on CPU."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from roadminer.core.config import StateConfig
from roadminer.imaging.decode import encode_jpeg
from roadminer.imaging.scenes import draw_scene, write_scene_folder
from roadminer.state.layer import StateLayer


async def _fill_queue(cfg: StateConfig, labelled: int, unlabelled: int) -> None:
    import numpy as np

    state = StateLayer.from_config(cfg)
    rng = np.random.default_rng(5)
    try:
        for i in range(labelled + unlabelled):
            label = i % 2
            jpeg = encode_jpeg(np.asarray(draw_scene(rng, bool(label), size=(160, 120))), quality=75)
            if i < labelled:
                await state.queue.enqueue(jpeg, ["known_error"], 1.0 - label * 0.9, "colour", label=label)
            else:
                await state.queue.enqueue(jpeg, ["low_margin"], 0.55, "colour")
    finally:
        await state.close()


async def _queue_stats(cfg: StateConfig) -> dict:
    state = StateLayer.from_config(cfg)
    try:
        return await state.queue.stats()
    finally:
        await state.close()


@pytest.mark.parametrize("teacher", [False, True], ids=["labelled-only", "teacher-pseudo-labels"])
def test_train_from_queue_adds_hard_examples(redis_url: str, tmp_path: Path, teacher: bool) -> None:
    import torch

    from roadminer.cli import app

    torch.set_num_threads(2)
    cfg = StateConfig(backend="redis", redis_url=redis_url, key_prefix=f"tfq{int(teacher)}:")
    asyncio.run(_fill_queue(cfg, labelled=4, unlabelled=3))
    base = tmp_path / "base"
    write_scene_folder(base, 4, seed=1, size=(160, 120))  # 4 per label
    config = tmp_path / "train.yaml"
    learning = (
        "learning: {teacher_tier: colour, pseudo_margin: 0.0}\n"
        "cascade: {tiers: [{name: colour, kind: colour}], consensus_file: null}\n"
        if teacher
        else "learning: {teacher_tier: null}\n"  # no teacher: only the queue's own labels
    )
    config.write_text(
        f"state: {{backend: redis, redis_url: '{redis_url}', key_prefix: '{cfg.key_prefix}'}}\n{learning}"
    )
    out = tmp_path / "model"
    res = CliRunner().invoke(
        app,
        [
            "train", "--data", str(base), "--out", str(out), "--config", str(config), "--from-queue",
            "--arch", "timm:test_efficientnet", "--epochs", "1", "--device", "cpu", "--workers", "0",
            "--set", "pretrained=false", "--set", "samples_per_epoch=8", "--set", "batch_size=8",
            "--set", "calib_frac=0", "--set", "amp=false",
        ],
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    export = json.loads(next(line for line in res.output.splitlines() if "queue_export" in line))["queue_export"]
    pseudo = 3 if teacher else 0
    assert export["acked"] == 7 and export["pseudo_labelled"] == pseudo
    assert export["written"]["roadwork"] + export["written"]["no_roadwork"] == 4 + pseudo
    assert export["written"]["unlabeled"] == 3 - pseudo
    qdir = out / "hard_examples"
    with (qdir / "manifest.csv").open() as f:
        origins = sorted(row["label_origin"] for row in csv.DictReader(f))
    assert origins.count("known") == 4 and origins.count("teacher") == pseudo
    card = json.loads((out / "card.json").read_text())
    assert card["data"]["n"] == 8 + 4 + pseudo  # base scenes + labelled hard examples (+ pseudo-labelled)
    assert (out / "model.safetensors").is_file()
    stats = asyncio.run(_queue_stats(cfg))
    assert stats["pending"] == 0 and stats["undelivered"] == 0  # exported entries were acknowledged


def test_train_from_empty_queue_trains_on_base_data(redis_url: str, tmp_path: Path) -> None:
    from roadminer.cli import app

    base = tmp_path / "base"
    write_scene_folder(base, 4, seed=2, size=(160, 120))
    out = tmp_path / "model"
    res = CliRunner().invoke(
        app,
        [
            "train", "--data", str(base), "--out", str(out), "--from-queue", "--redis-url", redis_url,
            "--arch", "timm:test_efficientnet", "--epochs", "1", "--device", "cpu", "--workers", "0",
            "--set", "pretrained=false", "--set", "samples_per_epoch=8", "--set", "batch_size=8",
            "--set", "calib_frac=0", "--set", "amp=false",
        ],
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "no labelled hard examples" in res.output
    assert json.loads((out / "card.json").read_text())["data"]["n"] == 8
