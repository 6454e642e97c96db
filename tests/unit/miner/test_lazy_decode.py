"""Images decoded only when a tier reads them: tiers that decode the payload themselves
(``needs_rgb = False``) are served without a decode before batching, with the image limits still
checked from the header, and the colour fallback still answering on a deadline."""

from __future__ import annotations

import base64
import functools
import time

import aiohttp
import numpy as np
import pytest

from roadminer.cascade.router import CascadeResult, EarlyExitRouter
from roadminer.imaging.decode import ImageDecodeError, ImagePolicy, decode_rgb, encode_jpeg, probe_image
from roadminer.models.base import ImageBatch, Tier, TierOutput, needs_decoded_images
from testkit.miner import ALICE, btauth_call, jpeg_b64, png_b64, run_miner, scene, settings_for, sn72_call


class CountingDecoder:
    def __init__(self, policy: ImagePolicy | None = None) -> None:
        self.policy = policy or ImagePolicy()
        self.calls = 0

    def __call__(self, raw: bytes) -> np.ndarray:
        self.calls += 1
        return decode_rgb(raw, self.policy)


class PayloadTier(Tier):
    """Reads only the payload bytes (as the GPU/ONNX tiers do); abstains on images that do not decode."""

    name = "payload"
    needs_rgb = False

    def __init__(self) -> None:
        self.seen_decoded: list[int] = []

    def predict(self, batch: ImageBatch) -> TierOutput:
        self.seen_decoded.append(batch.decoded_count)
        out = []
        for raw in batch.payloads:
            try:
                out.append(0.2 + 0.6 * decode_rgb(raw, ImagePolicy()).mean() / 255)
            except ImageDecodeError:
                out.append(np.nan)
        return TierOutput(prob=np.asarray(out))


class RgbTier(Tier):
    name = "rgb"

    def predict(self, batch: ImageBatch) -> TierOutput:
        return TierOutput(prob=np.array([0.3 if im.mean() < 128 else 0.7 for im in batch.rgb]))


def jpegs(n: int) -> list[bytes]:
    return [encode_jpeg(scene(i)) for i in range(n)]


def test_batch_decodes_lazily_and_subsets_keep_it_lazy() -> None:
    raws = jpegs(3)
    dec = CountingDecoder()
    batch = ImageBatch(payloads=raws, keys=["a", "b", "c"], decoder=dec)
    assert len(batch) == 3 and batch.decoded_count == 0
    sub = batch.subset([2, 0])
    assert sub.keys == ["c", "a"] and sub.payloads == [raws[2], raws[0]] and sub.decoded_count == 0
    assert sub.image(0).shape == (224, 224, 3) and dec.calls == 1
    assert len(sub.rgb) == 2 and dec.calls == 2 and sub.decoded_count == 2
    assert batch.decoded_count == 0  # the parent keeps its own list
    # already-decoded images are used as they are; undecodable ones raise clearly
    img = np.zeros((8, 8, 3), np.uint8)
    assert ImageBatch(rgb=[img]).rgb[0] is img
    with pytest.raises(ValueError, match="neither decoded nor decodable"):
        ImageBatch(rgb=[None]).rgb  # noqa: B018
    with pytest.raises(ImageDecodeError):
        ImageBatch(payloads=[raws[0][:300]], decoder=dec).rgb  # noqa: B018


def test_probe_checks_the_limits_from_the_header_only() -> None:
    raw = encode_jpeg(scene(0))
    head = probe_image(raw, ImagePolicy())
    assert (head.format, head.width, head.height) == ("JPEG", 224, 224)
    probe_image(raw[: len(raw) // 2], ImagePolicy())  # truncated body: the header is all it reads
    policy = ImagePolicy(max_pixels=300 * 300)
    big = base64.b64decode(png_b64(400, 400, noise=False))
    for fn in (probe_image, decode_rgb):
        with pytest.raises(ImageDecodeError, match="400x400 exceeds"):
            fn(big, policy)
        with pytest.raises(ImageDecodeError, match="cannot be decoded"):
            fn(b"hello world", policy)
        with pytest.raises(ImageDecodeError, match="accepted format"):
            fn(big, ImagePolicy(formats=("JPEG",)))


def test_router_leaves_images_undecoded_for_payload_tiers() -> None:
    raws = jpegs(4)
    dec = CountingDecoder()
    tier = PayloadTier()
    router = EarlyExitRouter([tier], [1.0], [None])
    assert not needs_decoded_images(router)
    res = router.predict(ImageBatch(payloads=raws, keys=list("abcd"), decoder=dec))
    assert res.exit_tier == ["payload"] * 4 and dec.calls == 0 and tier.seen_decoded == [0]
    # a later tier that reads rgb decodes only the images that reach it
    two = EarlyExitRouter([PayloadTier(), RgbTier()], [1.0, 1.0], [0.5, None])
    assert not needs_decoded_images(two)
    res = two.predict(ImageBatch(payloads=raws, decoder=dec))
    assert dec.calls == 0 and set(res.exit_tier) == {"payload"}  # all left after the first tier
    two.exit_conf = [None, None]
    res = two.predict(ImageBatch(payloads=raws, decoder=dec))
    assert dec.calls == 4 and set(res.exit_tier) == {"rgb"}
    # content gating or an rgb first tier: decoded up front
    assert needs_decoded_images(EarlyExitRouter([PayloadTier()], [1.0], [None], low_light_below=40.0))
    assert needs_decoded_images(EarlyExitRouter([RgbTier(), PayloadTier()], [1.0, 1.0], [None, None]))


async def test_miner_skips_the_decode_and_keeps_the_limits(tmp_path) -> None:
    tier = PayloadTier()
    router = EarlyExitRouter([tier], [1.0], [None])
    settings = settings_for(tmp_path, images={"max_pixels": 300 * 300})
    miner = await run_miner(settings, predictor=router)
    dec = CountingDecoder(miner.backend.policy)
    miner.backend.batcher.decoder = dec
    try:
        async with aiohttp.ClientSession() as s:
            p, code, _ = await sn72_call(s, miner, ALICE)
            assert code == 200 and p is not None and 0.2 < p < 0.8
            assert dec.calls == 0 and tier.seen_decoded == [0]  # no decode before the tier
            _, code, msg = await sn72_call(s, miner, ALICE, image_b64=png_b64(400, 400, noise=False))
            assert code == 413 and "400x400" in msg  # small file, too many pixels: refused from the header
            _, code, msg = await sn72_call(s, miner, ALICE, image_b64="aGVsbG8gd29ybGQ=")
            assert code == 400 and "cannot be decoded" in msg
            # a corrupt body behind a valid header reaches the model, which abstains: a "no" answer
            raw = base64.b64decode(jpeg_b64(3))
            truncated = base64.b64encode(raw[: len(raw) // 2]).decode()
            p, code, _ = await sn72_call(s, miner, ALICE, image_b64=truncated)
            assert code == 200 and p is not None and p < 0.5
            p, code, _ = await sn72_call(s, miner, ALICE, image_b64=jpeg_b64(4))  # still serving
            assert code == 200 and p is not None and p > 0.2
    finally:
        await miner.stop()


class SlowPayloadPredictor:
    version = "slow-payload-1"
    needs_rgb = False

    def predict(self, batch: ImageBatch) -> CascadeResult:
        time.sleep(2.0)
        return CascadeResult(prob=np.full(len(batch), 0.9), exit_tier=["slow"] * len(batch))


async def test_deadline_fallback_decodes_the_image_then(tmp_path) -> None:
    settings = settings_for(tmp_path, server={"request_deadline_s": 1.0})
    miner = await run_miner(settings, predictor=SlowPayloadPredictor())
    try:
        assert not needs_decoded_images(miner.backend.batcher.predictor)
        async with aiohttp.ClientSession() as s:
            status, body, _ = await btauth_call(s, miner, ALICE)
            assert status == 200 and body["tier"] == "fallback:colour-fallback"
            assert 0.0 < body["prediction"] < 1.0 and body["prediction"] != 0.9
        pred = await miner.backend.fallback_predict(None, base64.b64decode(jpeg_b64(1)))
        assert pred.fallback and pred.tier.startswith("fallback:colour")
        pred = await miner.backend.fallback_predict(None, b"\xff\xd8 not a jpeg")
        assert pred.tier == "fallback:none"  # undecodable: the tie-breaking "no", never an exception
    finally:
        await miner.stop()


def test_decoder_partial_is_policy_checked() -> None:
    dec = functools.partial(decode_rgb, policy=ImagePolicy(max_side=100))
    with pytest.raises(ImageDecodeError, match="exceeds"):
        ImageBatch(payloads=jpegs(1), decoder=dec).image(0)
