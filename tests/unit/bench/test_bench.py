"""The fast engine (CPU), the bench harness and the ``roadminer bench`` command, on real JPEGs."""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from roadminer.bench.harness import BenchConfig, BenchError, challenge_b64, measure_engine, measure_http, run_bench
from roadminer.bench.harness import markdown as harness_markdown
from roadminer.imaging.decode import ImageDecodeError, ImagePolicy, decode_rgb, encode_jpeg, to_b64
from roadminer.imaging.scenes import draw_scene, scene_jpegs
from roadminer.models.base import ImageBatch, build_tier
from roadminer.models.engines.fast_gpu import FastImageEngine, fold_batchnorm, jpeg_size, resolve_backbone


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return resolve_backbone()


@pytest.fixture(scope="module")
def engine(backbone):
    eng = FastImageEngine(copy.deepcopy(backbone), device="cpu", max_batch=8, decode_threads=2)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    return scene_jpegs(6, seed=3)


def _reference(backbone, images: list[np.ndarray]) -> np.ndarray:
    """The plain path: PIL-decoded RGB, normalised in float32, unfolded model."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        return torch.sigmoid(backbone.module((x - mean) / std).reshape(len(images), -1)[:, 0]).numpy()


def test_synthetic_inputs_are_challenge_like(jpegs):
    assert len({len(j) for j in jpegs}) > 1  # varied content
    for raw in jpegs:
        assert raw[:2] == b"\xff\xd8"
        assert jpeg_size(raw) == (224, 224)
        assert decode_rgb(raw, ImagePolicy()).shape == (224, 224, 3)


def test_engine_matches_plain_pytorch(engine, backbone, jpegs):
    images = [decode_rgb(r, ImagePolicy()) for r in jpegs]
    ref = _reference(backbone, images)
    from_bytes = engine.predict_bytes(jpegs)  # crosses max_batch=8? no: 6 images, one batch
    from_b64 = engine.predict_b64([to_b64(r) for r in jpegs])
    from_rgb = engine.predict_rgb(images)
    assert engine.folded_bn > 0  # batch norms folded into the convolutions, outputs unchanged
    np.testing.assert_allclose(from_bytes, ref, atol=1e-4)
    np.testing.assert_allclose(from_b64, from_bytes, atol=1e-6)
    np.testing.assert_allclose(from_rgb, from_bytes, atol=1e-6)
    assert np.all((from_bytes > 0) & (from_bytes < 1))


def test_engine_batches_beyond_max_batch_and_pipelines(engine, jpegs):
    raws = (jpegs * 3)[:17]
    one_by_one = np.concatenate([engine.predict_bytes([r]) for r in raws])
    np.testing.assert_allclose(engine.predict_bytes(raws), one_by_one, atol=1e-5)
    streamed = list(engine.stream_b64([[to_b64(r) for r in raws[a : a + 4]] for a in range(0, 17, 4)]))
    np.testing.assert_allclose(np.concatenate(streamed), one_by_one, atol=1e-5)


def test_engine_takes_other_sizes_and_formats(engine):
    # a drawn street scene (not noise: JPEG artefacts on white noise are not what a validator sends)
    img = np.asarray(draw_scene(np.random.default_rng(1), True, (200, 300)).convert("RGB"))
    png = io.BytesIO()
    Image.fromarray(img).save(png, format="PNG")
    out = engine.predict_bytes([encode_jpeg(img), png.getvalue()])
    assert out.shape == (2,)
    assert abs(out[0] - out[1]) < 0.05  # same picture, JPEG vs lossless


def test_engine_refuses_bad_input_clearly(engine):
    with pytest.raises(ImageDecodeError):
        engine.predict_bytes([b"not an image at all"])
    # a JPEG header that claims a huge frame is refused before any pixel is allocated
    bomb = bytearray(encode_jpeg(np.zeros((16, 16, 3), np.uint8)))
    i = 2
    while not (bomb[i] == 0xFF and bomb[i + 1] in (0xC0, 0xC2)):
        i += 2 + int.from_bytes(bomb[i + 2 : i + 4], "big")
    bomb[i + 5 : i + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")
    with pytest.raises(ImageDecodeError, match="exceeds"):
        engine.predict_bytes([bytes(bomb)])
    # the engine still answers afterwards
    assert engine.predict_bytes([encode_jpeg(np.zeros((224, 224, 3), np.uint8))]).shape == (1,)


def test_fold_batchnorm_refuses_when_outputs_change():
    class Odd(torch.nn.Module):  # BN registered after a conv but applied to the input, not the conv
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            self.bn = torch.nn.BatchNorm2d(3)
            self.bn.running_mean.fill_(0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.bn(x))

    m = Odd().eval()
    x = torch.randn(1, 3, 8, 8)
    before = m(x)
    assert fold_batchnorm(m, 8) == 0
    torch.testing.assert_close(m(x), before)
    assert isinstance(m.bn, torch.nn.BatchNorm2d)


def test_fast_gpu_tier_in_the_cascade_registry(jpegs):
    tier = build_tier("fast_gpu", "fast", {"device": "cpu", "max_batch": 4, "decode_threads": 1})
    try:
        rgb = [decode_rgb(r, ImagePolicy()) for r in jpegs[:3]]
        out = tier.predict(ImageBatch(rgb=rgb, payloads=list(jpegs[:3]), keys=["k"] * 3))
        assert out.prob.shape == (3,)
        # corrupt payloads: the tier answers from the already-decoded images
        bad = tier.predict(ImageBatch(rgb=rgb, payloads=[b"x", b"y", b"z"], keys=["k"] * 3))
        np.testing.assert_allclose(bad.prob, out.prob, atol=2e-2)
        assert tier.describe()["device"] == "cpu"
    finally:
        tier.close()


def test_measure_engine_reports_each_batch_size(engine):
    rows = measure_engine(engine, challenge_b64(4), (1, 4), seconds=0.05)
    assert [r["batch"] for r in rows] == [1, 4]
    assert all(r["img_per_s"] > 0 and r["images"] >= 3 * r["batch"] for r in rows)


def test_run_bench_cpu_end_to_end_over_loopback(tmp_path, monkeypatch):
    """One small run of everything except the (slow) ViT baseline: engines, real miner over HTTP."""
    monkeypatch.setenv("ROADMINER_CACHE", str(tmp_path / "cache"))
    cfg = BenchConfig(device="cpu", quick=True, batch_sizes=(2,), seconds=0.05, n_images=4,
                      http_requests=6, http_concurrency=(1, 3), cpu_variants=("onnx",), skip=("baseline",))
    res = run_bench(cfg, say=lambda m: None)
    out = res.to_json()
    json.dumps(out)  # serialisable
    assert out["fast"]["onnx-fp32"]["rows"][0]["img_per_s"] > 0
    # the shipped cascade (both tiers + consensus) on ONNX Runtime and on torch, answers compared
    assert list(out["cascade"]) == ["onnx", "torch"]
    onnx, torch_ = out["cascade"]["onnx"], out["cascade"]["torch"]
    assert [t["name"] for t in onnx["tiers"]] == ["classifier", "classifier2"]
    assert [t.get("engine") for t in onnx["tiers"]] == ["onnx", "onnx"]
    assert onnx["rows"][0]["img_per_s"] > 0 and 0.0 <= onnx["rows"][0]["first_tier_exit_share"] <= 1.0
    assert torch_["max_abs_diff_vs_first"]["cascade"] <= 0.01
    assert "shipped cascade" in harness_markdown(out)
    levels = out["http"]["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 3]
    assert all(lv["errors"] == 0 for lv in levels)
    assert all(isinstance(lv["fallback_answers"], int) and lv["fallback_answers"] >= 0 for lv in levels)
    assert out["summary"]["fast_best_variant"] == "onnx-fp32"
    # the numbers are the real miner's, answering signed SN72 requests with the shipped cascade
    assert out["http"]["server"].startswith("roadminer miner, 1 process") and out["http"]["signed"] is True
    assert out["http"]["axon_hotkey"].startswith("5")
    assert [t["name"] for t in out["http"]["tiers"]] == ["classifier", "classifier2"]


def test_bench_fails_with_the_reason_when_the_miner_cannot_start():
    b64 = challenge_b64(2)
    with pytest.raises(BenchError, match=r"(?s)the miner could not start: .*unknown tier kind 'no_such_engine'"):
        measure_http("cpu", b64, (1,), 2, tiers=[{"name": "x", "kind": "no_such_engine"}])
    with pytest.raises(BenchError, match=r"needs --redis-url"):
        measure_http("cpu", b64, (1,), 2, workers=2)


def test_bench_command_writes_json(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from roadminer.cli import app

    monkeypatch.setenv("ROADMINER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(app, ["bench", "--device", "cpu", "--quick", "--batch-sizes", "1", "--seconds", "0.05",
                                 "--skip", "cascade,http,baseline", "--cpu-variants", "onnx", "--out", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["summary"]["fast_best_img_per_s"] > 0
    assert data["env"]["cpu_count"] >= 1


def test_bench_inputs_from_an_image_folder_are_validator_challenges(shared_data):
    from roadminer.bench.harness import challenge_jpegs

    raws, origin = challenge_jpegs(6, str(shared_data / "images"), seed=1)
    assert "validator-parity challenges" in origin and len(raws) == 6
    for raw in raws:
        assert raw[:2] == b"\xff\xd8" and jpeg_size(raw) == (224, 224)
    assert raws == challenge_jpegs(6, str(shared_data / "images"), seed=1)[0]  # reproducible
