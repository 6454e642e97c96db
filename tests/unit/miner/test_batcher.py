import asyncio
import threading

import numpy as np

from roadminer.cascade.router import CascadeResult, EarlyExitRouter
from roadminer.miner.batcher import MicroBatcher
from roadminer.models.base import ImageBatch, Tier, TierOutput
from roadminer.models.colour import ColourCueTier


class RecordingTier(Tier):
    """Real computation (mean red channel) that records batch sizes and the thread it ran on."""

    name = "mean-red"

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.threads: set[str] = set()

    def predict(self, batch: ImageBatch) -> TierOutput:
        self.sizes.append(len(batch))
        self.threads.add(threading.current_thread().name)
        return TierOutput(prob=np.array([im[..., 0].mean() / 255.0 for im in batch.rgb]))


class BrokenTier(Tier):
    name = "broken"

    def predict(self, batch: ImageBatch) -> TierOutput:
        raise RuntimeError("model crashed")


def _img(red: int) -> np.ndarray:
    a = np.zeros((32, 32, 3), np.uint8)
    a[..., 0] = red
    return a


async def test_concurrent_requests_share_batches_off_the_event_loop() -> None:
    tier = RecordingTier()
    batcher = MicroBatcher(EarlyExitRouter([tier], [1.0], [None]), max_batch=16, max_wait_ms=20)
    await batcher.start()
    try:
        answers = await asyncio.gather(*(batcher.submit(_img(r)) for r in range(0, 250, 10)))
    finally:
        await batcher.stop()
    assert sum(tier.sizes) == 25 and max(tier.sizes) > 1 and max(tier.sizes) <= 16
    assert all(t.startswith("roadminer-infer") for t in tier.threads)
    probs = [a.prob for a in answers]
    assert probs == sorted(probs), "each caller gets its own image's answer"
    assert all(0 < p < 1 and p != 0.5 for p in probs)


async def test_failing_tier_falls_back_to_cheaper_answer() -> None:
    colour = ColourCueTier()
    router = EarlyExitRouter([colour, BrokenTier()], [1.0, 1.0], [None, None])
    res = router.predict(ImageBatch(rgb=[_img(200), _img(10)]))
    assert res.errors == ["broken: RuntimeError"]
    assert res.exit_tier == ["colour", "colour"]
    assert np.all((res.prob > 0) & (res.prob < 1)) and not np.any(res.prob == 0.5)


async def test_all_tiers_failing_still_answers_in_range() -> None:
    batcher = MicroBatcher(EarlyExitRouter([BrokenTier()], [1.0], [None]), max_batch=4, max_wait_ms=1)
    await batcher.start()
    try:
        a = await batcher.submit(_img(5))
    finally:
        await batcher.stop()
    assert 0 < a.prob < 0.5 and a.tier == "fallback"


async def test_early_exit_skips_later_tier_for_confident_images() -> None:
    first, second = RecordingTier(), RecordingTier()
    router = EarlyExitRouter([first, second], [1.0, 1.0], [0.9, None])
    res = router.predict(ImageBatch(rgb=[_img(255), _img(128), _img(0)]))
    assert res.exit_tier == ["mean-red", "mean-red", "mean-red"]
    assert second.sizes == [1], "only the uncertain image (p=0.5) reaches tier 2"


class ShortResultRouter:
    """A predictor whose result has fewer answers than images (a broken hot-reloaded model)."""

    version = "short"

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, batch: ImageBatch) -> CascadeResult:
        self.calls += 1
        return CascadeResult(prob=np.zeros(0), exit_tier=[])


async def test_malformed_result_fails_the_requests_not_the_worker() -> None:
    predictor = ShortResultRouter()
    batcher = MicroBatcher(predictor, max_batch=4, max_wait_ms=1)
    await batcher.start()
    try:
        for _ in range(2):  # the worker is still there for the second request
            try:
                await asyncio.wait_for(batcher.submit(_img(5)), 5.0)
            except RuntimeError as e:
                assert "unusable" in str(e)
            else:
                raise AssertionError("a malformed result must fail the request")
    finally:
        await batcher.stop()
    assert predictor.calls == 2
