"""Typed tier options: each kind's model matches its tier's constructor (no catch-all keyword arguments),
``build_tier`` refuses what the model refuses, a consensus fitted for the first tiers carries on to a judge."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from roadminer.cascade.consensus import ConsensusParams, logit
from roadminer.core.config import ASSETS_DIR
from roadminer.core.tier_options import PLAN_HINTS, TIER_OPTIONS, TierOptions, validate_tier_options
from roadminer.models.base import build_tier, register_tier


def _tier_classes() -> dict[str, type]:
    from roadminer.models.classifier import ClassifierTier
    from roadminer.models.colour import ColourCueTier
    from roadminer.models.detector import YoloTier
    from roadminer.models.engines.fast_gpu import FastGpuTier
    from roadminer.models.engines.onnx_cpu import OnnxCpuTier
    from roadminer.models.ocr import OcrTier
    from roadminer.models.vlm.hf import HFVLMTier
    from roadminer.models.vlm.vllm import VLLMTier

    return {"classifier": ClassifierTier, "colour": ColourCueTier, "yolo": YoloTier, "ocr": OcrTier,
            "fast_gpu": FastGpuTier, "onnx_cpu": OnnxCpuTier, "vlm_vllm": VLLMTier, "vlm_hf": HFVLMTier}


def test_every_option_is_a_constructor_parameter_with_the_same_default() -> None:
    from roadminer.models.base import _KIND_MODULES

    classes = _tier_classes()
    assert set(classes) == set(_KIND_MODULES) and set(classes) <= set(TIER_OPTIONS)  # every built-in kind
    for kind, cls in classes.items():
        params = inspect.signature(cls.__init__).parameters
        assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), f"{cls.__name__} takes **kwargs"
        model = TIER_OPTIONS[kind]
        passed = {k for k in model.model_fields if k not in PLAN_HINTS | model.plan_only}
        assert passed <= set(params), f"{kind}: options {passed - set(params)} are not constructor parameters"
        defaults = model().model_dump()
        for key in passed - {"device"}:  # device None = the top-level one: the tier's own default applies
            default = params[key].default
            if default is not inspect.Parameter.empty and not (default is None and defaults[key] == []):
                assert defaults[key] == default, f"{kind}.{key}: {defaults[key]!r} vs constructor {default!r}"


def test_build_tier_refuses_unknown_and_ill_typed_options() -> None:
    with pytest.raises(ValueError, match=r"tier 'fast' \(classifier\): options\.devcie: Extra inputs"):
        build_tier("classifier", "fast", {"devcie": "cpu"})
    with pytest.raises(ValueError, match=r"options\.batch_size: .*greater than or equal to 1"):
        build_tier("classifier", "fast", {"batch_size": 0})
    with pytest.raises(ValueError, match=r"options\.exemplars\[0\]\.answer: an exemplar's answer must be Yes or No"):
        build_tier("vlm_vllm", "vlm", {"exemplars": [{"image": "a.jpg", "answer": "maybe"}]})
    # Planner hints are accepted and never reach the tier.
    tier = build_tier("colour", "c", {"params": "1M", "activation_mb": 1.0})
    assert tier.name == "c"


def test_none_device_is_left_to_the_tier_and_planner_hints_are_dropped() -> None:
    typed = validate_tier_options("classifier", {"device": None, "weights_gb": 0.1, "batch_size": 8})
    kwargs = typed.tier_kwargs()
    assert "device" not in kwargs and "weights_gb" not in kwargs and kwargs["batch_size"] == 8
    vllm = validate_tier_options("vlm_vllm", {"device": "remote", "dtype": "bf16", "kv_layers": 28})
    assert not {"device", "dtype", "kv_layers"} & set(vllm.tier_kwargs())


def test_a_new_kind_needs_its_options_model() -> None:
    with pytest.raises(ValueError, match="needs its options model"):
        register_tier("test_no_options")

    class EchoOptions(TierOptions):
        p: float = 0.7

    class EchoTier:
        def __init__(self, name: str, p: float) -> None:
            self.name, self.p = name, p

    from roadminer.models.base import _REGISTRY

    register_tier("test_echo", options=EchoOptions)(EchoTier)
    try:
        assert build_tier("test_echo", "e", {"p": 0.9}).p == 0.9  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match=r"options\.q"):
            build_tier("test_echo", "e", {"q": 1})
    finally:
        _REGISTRY.pop("test_echo")
        TIER_OPTIONS.pop("test_echo")


def test_consensus_for_the_first_tiers_carries_on_to_a_judge() -> None:
    shipped = ConsensusParams.load(ASSETS_DIR / "models" / "cascade_consensus.json")
    assert shipped.tiers == ["classifier", "classifier2"] and shipped.fitted
    names = ["classifier", "classifier2", "vlm"]
    ext = shipped.extended(names, [1.0, 1.0, 2.0], [0.865, 0.9, None])
    assert ext.tiers == names and ext.fitted
    assert ext.stages[:2] == shipped.stages  # the fitted stages as they are
    # Stage 2: the fitted stage-1 log-odds (weight 1 + 1) and the judge (weight 2), half each.
    rng = np.random.default_rng(0)
    probs = rng.uniform(0.02, 0.98, size=(50, 3))
    z_fitted = shipped.stages[1].log_odds(probs[:, :2])
    expected = 0.5 * z_fitted + 0.5 * logit(probs[:, 2])
    np.testing.assert_allclose(ext.stages[2].log_odds(probs), expected, rtol=1e-12)
    # Exits: the fitted one, then the configured ones (the fit never scored an exit after its last stage).
    assert ext.exit_confidence == [shipped.exit_confidence[0], 0.9, None]
    with pytest.raises(ValueError, match="does not start the cascade"):
        shipped.extended(["classifier2", "classifier", "vlm"], [1, 1, 1], [None] * 3)


def test_router_keeps_the_shipped_consensus_with_a_judge_appended() -> None:
    from roadminer.cascade.router import EarlyExitRouter
    from roadminer.models.base import ImageBatch, Tier, TierOutput

    class Fixed(Tier):
        def __init__(self, name: str, p: float) -> None:
            self.name, self.p = name, p

        def predict(self, batch: ImageBatch) -> TierOutput:
            return TierOutput(prob=np.full(len(batch), self.p))

    shipped = ConsensusParams.load(ASSETS_DIR / "models" / "cascade_consensus.json")
    p0 = 0.5  # Lite0 undecided: the shipped stage 0 keeps it in (checked first, so a refit says so here)
    assert float(shipped.stage_prob(0, np.array([[p0]]))[0]) < shipped.exit_confidence[0]
    tiers = [Fixed("classifier", p0), Fixed("classifier2", 0.55), Fixed("vlm", 0.95)]
    router = EarlyExitRouter(tiers, [1.0, 1.0, 2.0], [0.865, None, None], consensus=shipped)
    assert router.consensus.fitted and router.version.endswith("/stacked")
    res = router.predict(ImageBatch(rgb=[np.zeros((8, 8, 3), np.uint8)] * 2))
    assert res.exit_tier == ["vlm", "vlm"]
    z1 = shipped.stages[1].log_odds(np.array([[p0, 0.55]]))[0]
    expected = 1 / (1 + np.exp(-(0.5 * z1 + 0.5 * logit(0.95))))
    assert res.prob[0] == pytest.approx(expected)
    # A consensus for other tiers is still dropped for plain weights.
    other = EarlyExitRouter([Fixed("a", 0.6), Fixed("classifier2", 0.5)], [1.0, 1.0], [None, None],
                            consensus=shipped)
    assert not other.consensus.fitted
