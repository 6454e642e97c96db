"""GPU memory planner: arithmetic, first-fit-decreasing packing, the CLI's refusal, the start-up check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from roadminer.cli import app
from roadminer.core.config import Settings, TierConfig, load_settings
from roadminer.deploy.planner import (
    GIB,
    PlanError,
    check_plan,
    kv_cache_bytes,
    make_plan,
    pack,
    parse_count,
    tier_memory,
)

# The over-committed single-GPU plan: 78.0 + 1.3 + 0.5 GiB of tiers + 0.5 GiB CUDA context = 80.3 GiB.
OVERCOMMITTED = {
    "device": "cuda",
    "batcher": {"max_batch": 64},
    "cascade": {
        "tiers": [
            {"name": "colour", "kind": "colour"},
            {"name": "fast", "kind": "classifier", "options": {"weights_gb": 0.3, "activation_gb": 1.0}},
            {"name": "det", "kind": "yolo", "options": {"weights_gb": 0.2, "activation_gb": 0.3}},
            {
                "name": "judge",
                "kind": "vlm_vllm",
                "options": {"weights_gb": 64.0, "kv_gb": 12.0, "activation_gb": 2.0},
            },
        ]
    },
}


def write_config(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_parse_count_and_kv_formula() -> None:
    assert parse_count("7B") == 7e9
    assert parse_count("86.6M") == pytest.approx(86.6e6)
    assert parse_count(2.5e6) == 2.5e6
    with pytest.raises(ValueError):
        parse_count("seven")
    # layers x kv_heads x head_dim x 2 (K,V) x tokens x bytes x seqs
    assert kv_cache_bytes(28, 4, 128, 4096, "bf16", 16) == 28 * 4 * 128 * 2 * 4096 * 2 * 16


def test_tier_memory_from_options_and_defaults() -> None:
    vlm = TierConfig(
        name="vlm",
        kind="vlm_vllm",
        options={
            "params": "7B",
            "dtype": "bf16",
            "kv_layers": 28,
            "kv_heads": 4,
            "head_dim": 128,
            "kv_tokens": 4096,
            "max_num_seqs": 16,
            "activation_gb": 1.0,
        },
    )
    m = tier_memory(vlm, default_batch=64)
    assert m.weights_gib == pytest.approx(7e9 * 2 / GIB)
    assert m.kv_gib == pytest.approx(28 * 4 * 128 * 2 * 4096 * 2 * 16 / GIB)
    assert m.activations_gib == pytest.approx(1.0)
    assert m.batch == 16  # a VLM's batch is its concurrent sequences
    # An engine tier that names its backbone gets the known parameter count; activations scale with batch.
    clf = TierConfig(
        name="clf",
        kind="fast_gpu",
        options={"arch": "vit_base_patch16_224", "activation_mb": 10},
    )
    m = tier_memory(clf, default_batch=32)
    assert m.weights_gib == pytest.approx(86.6e6 * 2 / GIB)
    assert m.activations_gib == pytest.approx(10 * 32 / 1024)
    # The colour tier runs on the CPU and takes no GPU memory.
    assert tier_memory(TierConfig(name="c", kind="colour"), 64).device == "cpu"
    # vLLM pre-allocates its share of the card.
    util = TierConfig(name="v", kind="vlm_vllm", options={"gpu_memory_utilization": 0.5})
    assert tier_memory(util, 64, gpu_mem_gib=80).total_gib == pytest.approx(40.0)


def test_first_fit_decreasing_packs_largest_first() -> None:
    tiers = [
        tier_memory(TierConfig(name=n, kind="classifier", options={"weights_gb": w, "activation_gb": 0}), 1)
        for n, w in [("a", 10), ("b", 50), ("c", 30), ("d", 25)]
    ]
    plan = pack(tiers, gpus=2, gpu_mem_gib=80, overhead_gib=0.5)
    assert plan.fits
    by_name = {t.name: t.gpu for t in plan.tiers}
    assert by_name == {"b": 0, "c": 1, "d": 0, "a": 1}  # 50+25 | 30+10
    assert plan.gpus[0].used_gib == pytest.approx(75.5)


def test_overcommitted_gpu_is_refused_and_two_gpus_fit() -> None:
    settings = Settings(**OVERCOMMITTED)
    plan = make_plan(settings, gpus=1, gpu_mem_gib=80)
    assert not plan.fits
    assert plan.gpus[0].used_gib == pytest.approx(80.3)
    assert "80.3 GiB of 80.0 GiB" in plan.problems[0]
    two = make_plan(settings, gpus=2, gpu_mem_gib=80)
    assert two.fits
    placed = {t.name: t.gpu for t in two.tiers if t.device == "gpu"}
    assert placed == {"judge": 0, "fast": 0, "det": 1}  # 79.8 | 1.0 GiB
    # Exactly full fits (no float-noise refusals).
    assert make_plan(settings, gpus=1, gpu_mem_gib=80.3).fits


def test_pinned_tier_beyond_gpu_count_is_a_problem() -> None:
    tiers = [tier_memory(TierConfig(name="x", kind="yolo", options={"gpu": 3}), 8)]
    plan = pack(tiers, gpus=2, gpu_mem_gib=80)
    assert not plan.fits and "pinned to GPU 3" in plan.problems[0]


def test_plan_cli_refuses_80_3_on_80(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, OVERCOMMITTED)
    runner = CliRunner()
    res = runner.invoke(app, ["plan", "--config", str(cfg), "--gpus", "1", "--gpu-mem", "80"])
    assert res.exit_code == 1, res.output
    assert "OVER" in res.output and "80.3" in res.output and "refused" in res.output
    ok = runner.invoke(app, ["plan", "--config", str(cfg), "--gpus", "2", "--gpu-mem", "80"])
    assert ok.exit_code == 0, ok.output
    assert "plan fits" in ok.output
    js = runner.invoke(app, ["plan", "--config", str(cfg), "--gpus", "1", "--gpu-mem", "80", "--json"])
    data = json.loads(js.stdout)
    assert data["fits"] is False and data["gpus"][0]["used_gib"] == pytest.approx(80.3)
    missing = runner.invoke(app, ["plan", "--config", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "config file not found" in missing.output


def test_check_plan_at_startup(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, OVERCOMMITTED)
    over = load_settings(cfg, {"plan.gpus": 1, "plan.gpu_mem_gb": 80})
    with pytest.raises(PlanError, match=r"80\.3 GiB of 80\.0 GiB"):
        check_plan(over)
    # Off switch: logs instead of refusing.
    lenient = load_settings(cfg, {"plan.gpus": 1, "plan.gpu_mem_gb": 80, "plan.enforce": False})
    assert not check_plan(lenient).fits
    assert check_plan(load_settings(cfg, {"plan.gpus": 2, "plan.gpu_mem_gb": 80})).fits
    # A CPU miner has nothing to place on a GPU.
    assert check_plan(load_settings(cfg, {"device": "cpu", "plan.gpus": 1, "plan.gpu_mem_gb": 1})).fits
