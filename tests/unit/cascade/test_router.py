"""Router behaviour from config: VLM flag, consensus file, abstaining tiers, the cascade-fit command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from roadminer.cascade.consensus import ConsensusParams
from roadminer.cascade.router import EarlyExitRouter
from roadminer.core.config import CascadeConfig, TierConfig, load_settings
from roadminer.core.tier_options import TierOptions
from roadminer.models.base import ImageBatch, Tier, TierOutput, register_tier


class RedTier(Tier):
    """Mean red share; ``nan_every`` > 0 abstains (NaN) on every n-th image, ``fail`` raises."""

    def __init__(self, name: str, nan_every: int = 0, fail: bool = False, **_: object) -> None:
        self.name = name
        self.nan_every = nan_every
        self.fail = fail

    def predict(self, batch: ImageBatch) -> TierOutput:
        if self.fail:
            raise RuntimeError("backend down")
        p = np.array([0.02 + 0.96 * x[..., 0].mean() / 255.0 for x in batch.rgb])
        if self.nan_every:
            p[:: self.nan_every] = np.nan
        return TierOutput(prob=p)


class RedOptions(TierOptions):
    nan_every: int = 0
    fail: bool = False


register_tier("test_red", options=RedOptions)(RedTier)


def _img(red: int) -> np.ndarray:
    a = np.zeros((16, 16, 3), np.uint8)
    a[..., 0] = red
    return a


def test_vlm_tiers_only_with_the_flag(monkeypatch) -> None:
    from roadminer.models import base as tiers_mod

    monkeypatch.setitem(tiers_mod._REGISTRY, "vlm_hf", RedTier)  # stands in: the flag gates by kind
    tiers = [TierConfig(name="red", kind="test_red"), TierConfig(name="vlm", kind="vlm_hf")]
    off = EarlyExitRouter.from_config(CascadeConfig(tiers=tiers))
    on = EarlyExitRouter.from_config(CascadeConfig(tiers=tiers, vlm=True))
    assert [t.name for t in off.tiers] == ["red"]
    assert [t.name for t in on.tiers] == ["red", "vlm"]
    # The flag is reachable from the environment and dotted CLI overrides.
    assert load_settings(overrides={"cascade.vlm": True}).cascade.vlm is True


def test_vlm_flag_from_environment(monkeypatch) -> None:
    monkeypatch.setenv("ROADMINER_CASCADE__VLM", "1")
    assert load_settings().cascade.vlm is True


def test_abstaining_tier_keeps_the_earlier_answer() -> None:
    router = EarlyExitRouter([RedTier("a"), RedTier("b", nan_every=2)], [1.0, 1.0], [None, None])
    res = router.predict(ImageBatch(rgb=[_img(250), _img(250), _img(10), _img(10)]))
    assert res.exit_tier == ["a", "b", "a", "b"]
    assert np.isnan(res.tier_probs["b"][0]) and np.isfinite(res.tier_probs["b"][1])
    assert res.prob[0] == res.prob[1] and res.prob[2] == res.prob[3]
    assert any("no answer for 2 images" in e for e in res.errors)


def test_failing_tier_falls_back_and_all_failing_answers_no() -> None:
    router = EarlyExitRouter([RedTier("a"), RedTier("b", fail=True)], [1.0, 1.0], [None, None])
    res = router.predict(ImageBatch(rgb=[_img(250)]))
    assert res.exit_tier == ["a"] and res.prob[0] > 0.5 and res.errors == ["b: RuntimeError"]
    dead = EarlyExitRouter([RedTier("a", fail=True)], [1.0], [None])
    res = dead.predict(ImageBatch(rgb=[_img(250)]))
    assert res.exit_tier == ["fallback"] and 0 < res.prob[0] < 0.5
    assert list(res.exit_index) == [-1]


def test_consensus_file_is_loaded_and_a_mismatch_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    params = ConsensusParams.unfitted(["a", "b"], [1.0, 1.0], [0.7, None])
    params.fitted = True
    params.save(path)
    tiers = [TierConfig(name="a", kind="test_red"), TierConfig(name="b", kind="test_red")]
    router = EarlyExitRouter.from_config(CascadeConfig(tiers=tiers, consensus_file=str(path)))
    assert router.exit_conf == [0.7, None] and router.version.endswith("/stacked")
    res = router.predict(ImageBatch(rgb=[_img(255), _img(128)]))
    assert res.exit_tier == ["a", "b"]
    other = [TierConfig(name="x", kind="test_red"), TierConfig(name="b", kind="test_red")]
    router = EarlyExitRouter.from_config(CascadeConfig(tiers=other, consensus_file=str(path)))
    assert not router.consensus.fitted and router.exit_conf == [None, None]


def _scene(roadwork: bool, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (96, 96), tuple(int(v) for v in rng.integers(90, 140, 3)))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 60, 96, 96), fill=(70, 70, 75))
    if roadwork:
        for _ in range(int(rng.integers(2, 5))):
            x = int(rng.integers(5, 80))
            d.polygon([(x, 90), (x + 12, 90), (x + 6, 60)], fill=(250, 110, 10))
    return img


def test_cascade_fit_command_writes_a_usable_consensus(tmp_path: Path) -> None:
    from roadminer.cli import _register_all, app

    for label, pos in (("roadwork", True), ("no_roadwork", False)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(16):
            _scene(pos, i + (100 if pos else 0)).save(tmp_path / "data" / label / f"s{i}.jpg")
    cfg = {"cascade": {"tiers": [
        {"name": "colour", "kind": "colour", "exit_confidence": None},
        {"name": "red", "kind": "test_red"},
    ]}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "consensus.json"
    _register_all()
    result = CliRunner().invoke(app, ["cascade-fit", "--images", str(tmp_path / "data"), "--config",
                                      str(tmp_path / "cfg.yaml"), "--out", str(out), "--all", "--level", "0"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["tiers"] == ["colour", "red"] and data["fitted"]
    assert set(data["report"]["exit_rate"]) == {"colour", "red"}
    assert data["report"]["mcc_cascade"] >= data["report"]["mcc_all_tiers"] - 1e-9
    cfg["cascade"]["consensus_file"] = str(out)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    settings = load_settings(tmp_path / "cfg.yaml")
    router = EarlyExitRouter.from_config(settings.cascade)
    assert router.consensus.fitted
