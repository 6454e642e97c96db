"""The in-process VLM tier on a tiny random-weight Qwen2-VL: the cached prefix gives the same logits
as a full prefill, the stored prefix is never mutated, P(yes) reads the yes/no variants."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from roadminer.cascade.router import EarlyExitRouter  # noqa: E402
from roadminer.models.base import ImageBatch, build_tier  # noqa: E402
from roadminer.models.vlm.hf import HFVLMTier  # noqa: E402
from roadminer.models.vlm.random_qwen import build_local_processor, random_qwen2vl  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoProcessor

    path = build_local_processor(tmp_path_factory.mktemp("proc"), max_pixels=56 * 56)
    processor = AutoProcessor.from_pretrained(path)
    return processor, random_qwen2vl(processor, "tiny", seed=0)


def scene(seed: int, size: int = 96) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def make_tier(tiny, exemplars: int = 2, **kw) -> HFVLMTier:
    processor, model = tiny
    ex = [{"image": scene(100 + i), "answer": "Yes" if i % 2 == 0 else "No"} for i in range(exemplars)]
    return HFVLMTier(name="vlm", model="tiny-qwen2-vl", model_obj=model, processor_obj=processor,
                     exemplars=ex, image_size=56, **kw)


@pytest.mark.parametrize("exemplars", [0, 2])
def test_cached_prefix_logits_equal_full_prefill(tiny, exemplars: int) -> None:
    tier = make_tier(tiny, exemplars)
    images = [scene(i, size=40 + 30 * i) for i in range(3)]  # mixed sizes, resized by the tier
    cached = tier.next_token_logits(images, use_prefix_cache=True)
    full = tier.next_token_logits(images, use_prefix_cache=False)
    torch.testing.assert_close(cached, full, atol=2e-4, rtol=1e-4)
    # Batched answers equal one-by-one answers (no cross-talk through the shared prefix).
    single = torch.cat([tier.next_token_logits([im]) for im in images])
    torch.testing.assert_close(cached, single, atol=2e-4, rtol=1e-4)
    assert tier.prefix_len > 0 and tier.kv_cache.stats.computed == 1


def test_stored_prefix_is_not_mutated_by_requests(tiny) -> None:
    tier = make_tier(tiny)
    kv = tier.prefix_kv()
    before = [(k.clone(), v.clone()) for k, v in kv.layers]
    tier.predict(ImageBatch(rgb=[scene(1), scene(2)]))
    tier.predict(ImageBatch(rgb=[scene(3)]))
    assert kv.seq_len == tier.prefix_len
    for (k0, v0), (k1, v1) in zip(before, kv.layers, strict=True):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)


def test_probability_is_softmax_over_yes_and_no_variants(tiny) -> None:
    tier = make_tier(tiny, exemplars=0)
    vocab = tier.model.config.text_config.vocab_size
    logits = torch.full((2, vocab), -30.0)
    logits[0, tier.yes_ids[0]] = 2.0
    logits[0, tier.no_ids[0]] = 0.0
    logits[1, tier.yes_ids] = 0.0  # every variant equally likely on both sides
    logits[1, tier.no_ids] = 0.0
    p = tier.probs_from_logits(logits)
    rest = (len(tier.yes_ids) - 1) * np.exp(-30.0)
    expected0 = (np.exp(2.0) + rest) / (np.exp(2.0) + rest + 1.0 + (len(tier.no_ids) - 1) * np.exp(-30.0))
    assert p[0] == pytest.approx(expected0, rel=1e-5)
    assert p[1] == pytest.approx(len(tier.yes_ids) / (len(tier.yes_ids) + len(tier.no_ids)), rel=1e-5)


def test_tier_serves_inside_the_cascade(tiny) -> None:
    processor, model = tiny
    tier = build_tier("vlm_hf", "vlm", {"model": "tiny-qwen2-vl", "image_size": 56,
                                        "exemplars": [{"image": scene(7), "answer": "no"}]},
                      model_obj=model, processor_obj=processor)
    tier.warmup()
    router = EarlyExitRouter([tier], [1.0], [None])
    res = router.predict(ImageBatch(rgb=[scene(1), scene(2), scene(3)]))
    assert res.exit_tier == ["vlm"] * 3 and not res.errors
    assert np.all((res.prob > 0) & (res.prob < 1)) and not np.any(res.prob == 0.5)
    assert tier.describe()["prefix_tokens"] == tier.prefix_len


def test_bad_exemplar_answer_is_refused(tiny) -> None:
    processor, model = tiny
    with pytest.raises(ValueError, match="Yes or No"):
        HFVLMTier(model_obj=model, processor_obj=processor,
                  exemplars=[{"image": scene(1), "answer": "maybe"}])
