"""ONNX Runtime CPU path: same answers as PyTorch (fp32), close ones in int8, cached exports."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from roadminer.imaging.decode import ImageDecodeError, ImagePolicy, decode_rgb
from roadminer.imaging.scenes import scene_jpegs
from roadminer.models.base import ImageBatch, build_tier
from roadminer.models.engines.fast_gpu import FastImageEngine, resolve_backbone
from roadminer.models.engines.onnx_cpu import OnnxCpuEngine


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    bb = resolve_backbone()
    cache = tmp_path_factory.mktemp("onnx")
    jpegs = scene_jpegs(8, seed=5)
    ref = FastImageEngine(copy.deepcopy(bb), device="cpu", max_batch=8, decode_threads=1).predict_bytes(jpegs)
    return bb, cache, jpegs, ref


def test_fp32_matches_pytorch_and_export_is_cached(setup):
    bb, cache, jpegs, ref = setup
    eng = OnnxCpuEngine(copy.deepcopy(bb), max_batch=4, cache_dir=cache, threads=1, decode_threads=1)
    np.testing.assert_allclose(eng.predict_bytes(jpegs), ref, atol=1e-4)  # 8 images in batches of 4
    rgb = [decode_rgb(r, ImagePolicy()) for r in jpegs]
    np.testing.assert_allclose(eng.predict_rgb(rgb), ref, atol=1e-4)
    files = sorted(p.name for p in cache.iterdir())
    mtime = eng.model_path.stat().st_mtime_ns
    again = OnnxCpuEngine(copy.deepcopy(bb), max_batch=4, cache_dir=cache, threads=1, decode_threads=1)
    assert sorted(p.name for p in cache.iterdir()) == files
    assert again.model_path.stat().st_mtime_ns == mtime  # reused, not re-exported
    with pytest.raises(ImageDecodeError):
        eng.predict_bytes([b"\xff\xd8 broken"])


def test_int8_stays_close_to_fp32(setup):
    bb, cache, jpegs, ref = setup
    eng = OnnxCpuEngine(copy.deepcopy(bb), int8=True, max_batch=8, cache_dir=cache, threads=1, decode_threads=1)
    got = eng.predict_bytes(jpegs)
    assert got.shape == ref.shape
    assert np.max(np.abs(got - ref)) < 0.1
    assert eng.describe()["precision"] == "int8"


def test_onnx_tier_builds_from_registry(setup):
    _, cache, jpegs, ref = setup
    torch.manual_seed(0)  # the untrained head of the default backbone is drawn from the seed
    tier = build_tier("onnx_cpu", "onnx", {"cache_dir": str(cache), "threads": 1, "max_batch": 8})
    rgb = [decode_rgb(r, ImagePolicy()) for r in jpegs]
    out = tier.predict(ImageBatch(rgb=rgb, payloads=list(jpegs), keys=[""] * len(jpegs)))
    np.testing.assert_allclose(out.prob, ref, atol=1e-4)
    tier.close()
