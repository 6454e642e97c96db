"""Device placement and classifier engines: the device reaches every tier, the shipped cascade runs on ONNX
Runtime on the CPU with the torch tier's answers (real photos), Pillow-exact resizing for the GPU path, and
the planner booking what the loaded tiers hold."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from roadminer.cascade.router import EarlyExitRouter
from roadminer.core.config import Settings
from roadminer.deploy.planner import GIB, check_plan, plan_loaded
from roadminer.imaging.augment import challenge_jpeg
from roadminer.imaging.decode import ImagePolicy, decode_rgb
from roadminer.imaging.resize import pil_bilinear_taps, resize_nchw_uint8
from roadminer.models.base import ImageBatch, needs_decoded_images
from roadminer.models.footprint import tier_footprint
from roadminer.models.placement import PlacementError, choose_engine, resolve_device

HAS_ONNX = importlib.util.find_spec("onnxruntime") is not None
CUDA = torch.cuda.is_available()
POLICY = ImagePolicy()


def test_resolve_device_names_and_refusals() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(" CPU ") == "cpu"
    assert resolve_device("auto") == ("cuda" if CUDA else "cpu")
    for bad in ("gpu", "cuda:x", "cuda0", "tpu", ""):
        if bad == "":
            assert resolve_device(bad) == resolve_device("auto")  # empty means auto
            continue
        with pytest.raises(PlacementError, match="not one of auto, cpu, cuda"):
            resolve_device(bad)
    if not CUDA:
        with pytest.raises(PlacementError, match="sees no CUDA GPU"):
            resolve_device("cuda:0")
    else:
        with pytest.raises(PlacementError, match="GPU"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_choose_engine() -> None:
    assert choose_engine("cuda", "auto") == "fast"
    assert choose_engine("cuda:1", "auto") == "fast"
    assert choose_engine("cpu", "auto") == ("onnx" if HAS_ONNX else "torch")
    assert choose_engine("cpu", "torch") == "torch"
    assert choose_engine("cpu", "fast") == "fast"  # the fast engine also runs (fp32) on a CPU
    with pytest.raises(PlacementError, match="CPU only"):
        choose_engine("cuda", "onnx")
    with pytest.raises(PlacementError, match="not one of"):
        choose_engine("cpu", "tensorrt")


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_when_the_cascade_is_built() -> None:
    with pytest.raises(PlacementError, match="sees no CUDA GPU"):
        EarlyExitRouter.from_settings(Settings(device="cuda"))


def test_device_reaches_every_tier_kind() -> None:
    """The cascade builder hands the device to every tier; a tier's own device option wins."""
    settings = Settings(device="cpu", cascade={"engine": "torch", "consensus_file": None, "tiers": [
        {"name": "colour", "kind": "colour"},
        {"name": "clf", "kind": "classifier", "options": {"weights": "roadwork_classifier.safetensors"}},
    ]})
    router = EarlyExitRouter.from_settings(settings)
    clf = router.tiers[1]
    assert clf.device == "cpu" and next(clf.model.parameters()).device.type == "cpu"
    assert router.tiers[1].describe()["kind"] == "ClassifierTier"


# ------------------------------------------------------------------------------------------ real photos
def _photos(root: Path, n: int = 30) -> list[bytes]:
    """``n`` challenges (validator augmentation levels 0-3, JPEG q75, 224x224) from real photos, both labels
    and every source."""
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault((r["label"], r["source"]), []).append(r)
    keys = sorted(groups)
    picked: list[dict[str, str]] = []
    i = 0
    while len(picked) < n and i < 100 * n:
        lst = groups[keys[i % len(keys)]]
        j = i // len(keys)
        if j < len(lst):
            picked.append(lst[(j * 7) % len(lst)])
        i += 1
    rng = np.random.default_rng(0)
    return [challenge_jpeg(Image.open(root / r["file"]), int(rng.integers(0, 4)), rng) for r in picked]


@pytest.fixture(scope="module")
def photos(shared_data: Path) -> list[bytes]:
    return _photos(shared_data)


def _batch(raws: list[bytes]) -> ImageBatch:
    return ImageBatch([decode_rgb(r, POLICY) for r in raws], list(raws), [""] * len(raws),
                      decoder=lambda b: decode_rgb(b, POLICY))


@pytest.fixture(scope="module")
def torch_answers(photos: list[bytes]):
    router = EarlyExitRouter.from_settings(Settings(device="cpu", cascade={"engine": "torch"}))
    assert [t.describe()["kind"] for t in router.tiers] == ["ClassifierTier", "ClassifierTier"]
    return router.predict(_batch(photos), early_exit=False), router


@pytest.mark.skipif(not HAS_ONNX, reason="onnxruntime is not installed (the cpu extra)")
def test_shipped_cascade_on_onnx_agrees_with_torch_on_real_photos(photos, torch_answers, tmp_path_factory,
                                                                 monkeypatch) -> None:
    monkeypatch.setenv("ROADMINER_CACHE", str(tmp_path_factory.mktemp("onnx-cache")))
    ref, torch_router = torch_answers
    router = EarlyExitRouter.from_settings(Settings(device="cpu"))  # engine auto -> ONNX Runtime on a CPU
    try:
        assert [t.describe()["engine"] for t in router.tiers] == ["onnx", "onnx"]
        assert [t.describe()["runtime"] for t in router.tiers] == ["onnxruntime"] * 2
        # on a CPU the engine tiers read the pixels the miner decoded (a corrupt image is a 400 there)
        assert all(t.needs_rgb for t in router.tiers) and needs_decoded_images(router)
        assert router.version == torch_router.version  # same weights, same model version
        got = router.predict(_batch(photos), early_exit=False)
        for name in ("classifier", "classifier2"):
            diff = np.abs(got.tier_probs[name] - ref.tier_probs[name])
            assert diff.max() <= 0.01, (name, diff.max())
        assert np.abs(got.prob - ref.prob).max() <= 0.01
        # the early-exit cascade takes the same decisions
        early_ref = torch_router.predict(_batch(photos))
        early = router.predict(_batch(photos))
        assert early.exit_tier == early_ref.exit_tier
        assert np.array_equal(early.prob > 0.5, early_ref.prob > 0.5)
        # the ONNX export is cached by weight hash: a second build reuses it
        cache = Path(str(router.tiers[0].engine.model_path)).parent
        files = sorted(p.name for p in cache.iterdir())
        again = EarlyExitRouter.from_settings(Settings(device="cpu"))
        assert sorted(p.name for p in cache.iterdir()) == files
        again.close()
    finally:
        router.close()


def test_fast_engine_agrees_with_torch_on_real_photos(photos, torch_answers) -> None:
    """The fast engine's code (fold BN, NHWC uint8 head, its own decoders) on this machine's device."""
    ref, _ = torch_answers
    router = EarlyExitRouter.from_settings(Settings(device="cpu", cascade={"engine": "fast"}))
    try:
        assert [t.describe()["engine"] for t in router.tiers] == ["fast", "fast"]
        got = router.predict(_batch(photos), early_exit=False)
        for name in ("classifier", "classifier2"):
            assert np.abs(got.tier_probs[name] - ref.tier_probs[name]).max() <= 0.01
    finally:
        router.close()


def test_gpu_resize_matches_pillow_on_real_photos(photos, shared_data: Path) -> None:
    """The GPU path resizes tensors with Pillow's arithmetic: bit-exact on challenges (224 -> Lite2's 260),
    and on raw photos to a square."""
    imgs = [decode_rgb(r, POLICY) for r in photos[:8]]
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    got = resize_nchw_uint8(x, 260, 260).permute(0, 2, 3, 1).numpy()
    ref = np.stack([np.asarray(Image.fromarray(im).resize((260, 260), Image.BILINEAR)) for im in imgs])
    assert np.array_equal(got, ref)
    raw = next((shared_data / "images" / "roadwork").glob("*.jpg"))
    photo = np.asarray(Image.open(raw).convert("RGB"))
    t = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None]
    down = resize_nchw_uint8(t, 224, 224)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(down, np.asarray(Image.fromarray(photo).resize((224, 224), Image.BILINEAR)))


def test_pil_taps_are_normalised() -> None:
    for a, b in ((224, 260), (1024, 224), (7, 3)):
        idx, w = pil_bilinear_taps(a, b)
        assert idx.shape == w.shape and idx.shape[0] == b
        assert idx.min() >= 0 and idx.max() < a
        assert np.all(np.abs(w.sum(axis=1) - (1 << 22)) <= w.shape[1])  # each row sums to 1.0 in fixed point


# -------------------------------------------------------------------------------------------- planner
def test_planner_books_what_the_loaded_tiers_hold() -> None:
    settings = Settings(device="cpu", cascade={"engine": "torch"}, plan={"gpus": 1, "gpu_mem_gb": 80})
    router = EarlyExitRouter.from_settings(settings)
    plan = plan_loaded(settings, router)
    by_name = {t.name: t for t in plan.tiers}
    assert set(by_name) == {"classifier", "classifier2"}
    for tier in router.tiers:
        mem = by_name[tier.name]
        n = sum(p.numel() for p in tier.model.parameters())
        assert mem.measured and mem.params == n and mem.device == "cpu" and mem.dtype == "fp32"
        assert mem.weights_gib * GIB >= n * 4  # fp32 parameters (+ batch-norm buffers)
    assert plan.fits and all(not g.tiers for g in plan.gpus)  # CPU tiers book no GPU memory
    assert check_plan(settings, router).fits

    # a tier whose weights were cast to half precision is booked at 2 bytes per parameter
    half = router.tiers[1]
    half.model.half()
    fp = tier_footprint(half)
    assert fp is not None and fp["dtype"] == "fp16"
    assert fp["params"] == sum(p.numel() for p in half.model.parameters())


def test_planner_books_one_copy_per_worker_process() -> None:
    one = Settings(device="cuda", plan={"gpus": 1, "gpu_mem_gb": 80})
    three = Settings(device="cuda", server={"workers": 3}, plan={"gpus": 1, "gpu_mem_gb": 80})
    from roadminer.deploy.planner import make_plan

    a, b = make_plan(one), make_plan(three)
    for x, y in zip(a.tiers, b.tiers, strict=True):
        assert y.copies == 3 and y.total_gib == pytest.approx(3 * x.total_gib)


def test_planner_reads_classifier_parameter_counts_from_the_file_header() -> None:
    """Before any model loads, the plan counts the shipped classifiers' parameters from their safetensors
    headers (not the kind's 25M default); the count equals the loaded model's."""
    from roadminer.deploy.planner import classifier_params, make_plan
    from roadminer.models.classifier import load_classifier
    from roadminer.models.placement import resolve_weights

    plan = make_plan(Settings(device="cuda", plan={"gpus": 1, "gpu_mem_gb": 80}))
    for mem, weights in zip(plan.tiers, ("roadwork_classifier.safetensors", "roadwork_classifier_lite2.safetensors"),
                            strict=True):
        model, _, _ = load_classifier(resolve_weights(weights))
        n = sum(p.numel() for p in model.parameters())
        assert classifier_params(weights) == n and mem.params == n and mem.device == "gpu"
    assert classifier_params("no_such_file.safetensors") is None


def test_placement_fills_only_what_the_options_leave_open() -> None:
    from roadminer.core.tier_options import validate_tier_options
    from roadminer.models.placement import Placement

    p = Placement("cuda:1", "fast", threads=3)

    def kwargs(kind: str, options: dict) -> dict:
        typed = validate_tier_options(kind, options)
        return p.tier_kwargs(kind, typed, typed.tier_kwargs())

    clf = kwargs("classifier", {"weights": "w.safetensors"})
    assert clf["device"] == "cuda:1" and clf["engine"] == "fast" and clf["threads"] == 3
    pinned = kwargs("classifier", {"device": "cpu", "threads": 1})
    assert pinned["device"] == "cpu" and pinned["threads"] == 1  # the tier's own options win
    assert kwargs("yolo", {})["device"] == "cuda:1" and "engine" not in kwargs("yolo", {})
    assert "device" not in kwargs("vlm_vllm", {"device": "remote"})  # planner-only there: never passed
    assert "device" not in kwargs("colour", {}) and kwargs("onnx_cpu", {})["threads"] == 3
    assert kwargs("onnx_cpu", {"threads": 2})["threads"] == 2
