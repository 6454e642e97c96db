"""The vLLM client tier against an OpenAI-compatible server on loopback that records each request."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import threading
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from roadminer.cascade.router import EarlyExitRouter
from roadminer.imaging.decode import encode_jpeg
from roadminer.models.base import ImageBatch, Tier, TierOutput, build_tier
from roadminer.models.vlm.vllm import VLLMTier, p_yes_from_logprobs


class FakeVLLM:
    """OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1 in its own thread and loop. The answer
    for an image is keyed by the image's mean red value: bright red -> confident Yes."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.mode = "ok"
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()

        async def handle(request: web.Request) -> web.Response:
            body = await request.json()
            self.requests.append(body)
            self.headers.append(dict(request.headers))
            if self.mode == "slow":
                await asyncio.sleep(1.5)
            if self.mode == "queue":  # each answer takes 0.3 s: a serial client runs out of batch deadline
                await asyncio.sleep(0.3)
            if self.mode == "error":
                return web.json_response({"error": "boom"}, status=500)
            url = body["messages"][-1]["content"][0]["image_url"]["url"]
            jpeg = base64.b64decode(url.split(",", 1)[1])
            from roadminer.imaging.decode import ImagePolicy, decode_rgb

            red = decode_rgb(jpeg, ImagePolicy())[..., 0].mean() / 255.0
            p_yes = 0.05 + 0.9 * red
            top = [{"token": "Yes", "logprob": math.log(p_yes * 0.8)},
                   {"token": "No", "logprob": math.log((1 - p_yes) * 0.8)},
                   {"token": " yes", "logprob": math.log(p_yes * 0.1)},
                   {"token": "no", "logprob": math.log((1 - p_yes) * 0.1)}]
            chosen = top[0] if p_yes > 0.5 else top[1]
            return web.json_response({"id": "x", "object": "chat.completion", "choices": [{
                "index": 0, "message": {"role": "assistant", "content": chosen["token"]},
                "logprobs": {"content": [{**chosen, "top_logprobs": top}]}, "finish_reason": "stop"}]})

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/v1/chat/completions", handle)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            started.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(start(), self.loop)
        started.wait(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def server():
    s = FakeVLLM()
    yield s
    s.stop()


def _img(red: int) -> np.ndarray:
    a = np.full((64, 64, 3), 40, np.uint8)
    a[..., 0] = red
    return a


def test_request_shape_and_probability(server: FakeVLLM) -> None:
    ex = [{"image": _img(250), "answer": "yes"}, {"image": _img(0), "answer": "No"}]
    tier = VLLMTier(base_url=server.base_url, model="Qwen/Qwen3-VL-4B-Instruct", exemplars=ex,
                    max_pixels=224 * 224, api_key="k1", timeout_s=5)
    try:
        payloads = [encode_jpeg(_img(255)), encode_jpeg(_img(0))]
        out = tier.predict(ImageBatch(rgb=[_img(255), _img(0)], payloads=payloads))
    finally:
        tier.close()
    assert len(server.requests) == 2
    body = server.requests[0]
    assert body["structured_outputs"] == {"choice": ["Yes", "No"]}
    assert "guided_choice" not in body
    assert body["logprobs"] is True and body["top_logprobs"] == 10 and body["max_tokens"] == 1
    assert body["temperature"] == 0.0 and body["model"] == "Qwen/Qwen3-VL-4B-Instruct"
    assert body["mm_processor_kwargs"] == {"max_pixels": 224 * 224}
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [body["messages"][i]["content"] for i in (2, 4)] == ["Yes", "No"]
    # The validator's JPEG goes out byte for byte.
    sent = {base64.b64decode(r["messages"][-1]["content"][0]["image_url"]["url"].split(",", 1)[1])
            for r in server.requests}
    assert sent == set(payloads)
    assert server.headers[0]["Authorization"] == "Bearer k1"
    # P(yes) pools the variants: (0.8 + 0.1) * p / (0.9 * p + 0.9 * (1 - p)) = p.
    red = [np.asarray(_img(255))[..., 0].mean() / 255.0, 0.0]
    assert out.prob[0] == pytest.approx(0.05 + 0.9 * red[0], abs=0.02)
    assert out.prob[1] == pytest.approx(0.05, abs=0.02)


def test_logprob_maths() -> None:
    top = [("Yes", 0.6), (" no", 0.2), ("NO", 0.1), ("Maybe", 0.05)]
    entry = {"token": "Yes", "logprob": math.log(0.6),
             "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in top]}
    assert p_yes_from_logprobs(entry) == pytest.approx(0.6 / 0.9)
    only_yes = {"token": "Yes", "logprob": math.log(0.9), "top_logprobs": [
        {"token": "Yes", "logprob": math.log(0.9)}, {"token": "The", "logprob": math.log(0.01)}]}
    assert p_yes_from_logprobs(only_yes) == pytest.approx(0.9 / 0.91)  # No bounded by the last listed
    with pytest.raises(ValueError):
        p_yes_from_logprobs({"token": "The", "logprob": -0.1, "top_logprobs": []})


class ConstTier(Tier):
    name = "cheap"

    def predict(self, batch: ImageBatch) -> TierOutput:
        return TierOutput(prob=np.full(len(batch), 0.7))


@pytest.mark.parametrize("mode", ["slow", "error"])
def test_timeout_or_error_falls_back_to_earlier_tiers(server: FakeVLLM, mode: str) -> None:
    server.mode = mode
    vlm = build_tier("vlm_vllm", "vlm", {"base_url": server.base_url, "timeout_s": 0.5})
    router = EarlyExitRouter([ConstTier(), vlm], [1.0, 2.0], [None, None])
    try:
        res = router.predict(ImageBatch(rgb=[_img(255), _img(0)]))
    finally:
        vlm.close()
    assert res.exit_tier == ["cheap", "cheap"]
    np.testing.assert_allclose(res.prob, 0.7)
    assert np.all(np.isnan(res.tier_probs["vlm"]))
    assert server.requests, "the request was sent"
    json.dumps(vlm.describe())


def test_unreachable_server_does_not_fail_the_cascade() -> None:
    from testkit.net import free_port

    vlm = VLLMTier(base_url=f"http://127.0.0.1:{free_port()}", timeout_s=1.0)
    router = EarlyExitRouter([ConstTier(), vlm], [1.0, 1.0], [None, None])
    try:
        vlm.warmup()  # logs, does not raise
        res = router.predict(ImageBatch(rgb=[_img(10)]))
    finally:
        vlm.close()
    assert res.exit_tier == ["cheap"] and res.prob[0] == pytest.approx(0.7)


def test_batch_deadline_keeps_the_answers_that_arrived(server: FakeVLLM) -> None:
    """With one request at a time, a batch larger than the deadline allows is answered in part: the VLM's
    answers that arrived count, the rest keep the earlier tier's answer (nothing waits for the batch)."""
    server.mode = "queue"
    vlm = build_tier("vlm_vllm", "vlm", {"base_url": server.base_url, "timeout_s": 0.8, "max_concurrency": 1})
    router = EarlyExitRouter([ConstTier(), vlm], [1.0, 2.0], [None, None])
    try:
        res = router.predict(ImageBatch(rgb=[_img(255)] * 8))
    finally:
        vlm.close()
    answered = ~np.isnan(res.tier_probs["vlm"])
    assert 1 <= answered.sum() < 8, res.tier_probs["vlm"]
    assert all(t == ("vlm" if a else "cheap") for t, a in zip(res.exit_tier, answered, strict=True))
    np.testing.assert_allclose(res.prob[~answered], 0.7)
    assert np.all(res.prob[answered] > 0.7)  # a confident Yes pooled with the cheap tier's 0.7


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_base_url_with_or_without_the_api_prefix(server: FakeVLLM, suffix: str) -> None:
    """``http://host:8000`` and the OpenAI-client style ``http://host:8000/v1`` reach the same endpoint (the
    server here answers only ``/v1/chat/completions``)."""
    vlm = build_tier("vlm_vllm", "vlm", {"base_url": server.base_url + suffix, "timeout_s": 5.0})
    try:
        out = vlm.predict(ImageBatch(rgb=[_img(255)], payloads=[encode_jpeg(_img(255))]))
    finally:
        vlm.close()
    assert vlm.url == server.base_url + "/v1/chat/completions"  # type: ignore[attr-defined]
    assert len(server.requests) == 1 and np.isfinite(out.prob).all() and out.prob[0] > 0.8
