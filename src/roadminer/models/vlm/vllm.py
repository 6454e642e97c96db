"""VLM judge served by vLLM (OpenAI-compatible ``/v1/chat/completions``).

One request per image, all of a batch in flight at once on a private aiohttp session and event loop
(the tier runs on the batcher's worker thread). The answer is constrained with
``structured_outputs={"choice": ["Yes", "No"]}`` (current vLLM silently ignores the old
``guided_choice``) and read as a probability from the first token's ``top_logprobs``: P(yes) = mass of
the yes variants / mass of yes + no variants. vLLM reports logprobs of the raw model distribution by
default, so the constraint does not flatten them to 0/1. A timeout or error leaves the image without an
answer (NaN): the cascade then keeps the earlier tiers' answer for it.

The few-shot exemplars are sent as earlier chat turns; with ``--enable-prefix-caching`` vLLM reuses their
KV across requests (see configs/vllm/).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from roadminer.core.tier_options import DEFAULT_INSTRUCTIONS, DEFAULT_QUESTION
from roadminer.imaging.decode import encode_jpeg
from roadminer.models.base import ImageBatch, Tier, TierOutput, clip_prob, register_tier

YES = {"yes"}
NO = {"no"}


def p_yes_from_logprobs(entry: dict[str, Any]) -> float:
    """P(yes) from one ``logprobs.content[i]`` entry (``token``, ``logprob``, ``top_logprobs``).

    Variants ("Yes", " yes", "YES", ...) are pooled per side. When one side is missing from the top-k,
    its mass is bounded by the smallest listed probability (it ranked below all of them)."""
    cands: dict[str, float] = {}
    for item in [entry, *(entry.get("top_logprobs") or [])]:
        tok, lp = item.get("token"), item.get("logprob")
        if isinstance(tok, str) and isinstance(lp, (int, float)) and math.isfinite(lp):
            cands[tok] = max(cands.get(tok, -math.inf), float(lp))
    if not cands:
        raise ValueError("response has no logprobs")
    yes = sum(math.exp(lp) for t, lp in cands.items() if t.strip().lower() in YES)
    no = sum(math.exp(lp) for t, lp in cands.items() if t.strip().lower() in NO)
    floor = math.exp(min(cands.values()))
    if yes == 0 and no == 0:
        raise ValueError(f"neither Yes nor No among the top tokens {sorted(cands)[:5]}")
    yes, no = yes or floor, no or floor
    return yes / (yes + no)


def chat_completions_url(base_url: str) -> str:
    """The chat endpoint of an OpenAI-compatible server given as ``http://host:8000`` or with the API
    prefix ``http://host:8000/v1`` (the OpenAI client's convention), trailing slashes or not."""
    base = base_url.strip().rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return base + "/v1/chat/completions"


def _data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


@register_tier("vlm_vllm")
class VLLMTier(Tier):
    version = "vlm-vllm-1"

    def __init__(self, name: str = "vlm", base_url: str = "http://127.0.0.1:8000",
                 model: str = "Qwen/Qwen3-VL-4B-Instruct", api_key: str | None = None, timeout_s: float = 3.0,
                 instructions: str = DEFAULT_INSTRUCTIONS, question: str = DEFAULT_QUESTION,
                 exemplars: list[dict[str, Any]] | None = None, top_logprobs: int = 10,
                 max_pixels: int | None = None, max_concurrency: int = 64) -> None:
        self.name = name
        self.url = chat_completions_url(base_url)
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.instructions, self.question = instructions, question
        self.top_logprobs = top_logprobs
        self.max_pixels = max_pixels
        self.max_concurrency = max(1, max_concurrency)
        self.exemplar_turns = [turn for e in (exemplars or []) for turn in self._exemplar_turns(e)]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{name}-http", daemon=True)
        self._thread.start()
        self._session: Any = None
        self._sem: asyncio.Semaphore | None = None

    def _exemplar_turns(self, e: dict[str, Any]) -> list[dict[str, Any]]:
        img = e["image"]
        jpeg = Path(img).read_bytes() if isinstance(img, (str, Path)) else encode_jpeg(np.asarray(img), 90)
        answer = str(e["answer"]).strip().capitalize()
        if answer not in ("Yes", "No"):
            raise ValueError(f"exemplar answer must be Yes or No, got {e['answer']!r}")
        return [self._user_turn(jpeg), {"role": "assistant", "content": answer}]

    def _user_turn(self, jpeg: bytes) -> dict[str, Any]:
        return {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": _data_url(jpeg)}},
            {"type": "text", "text": self.question},
        ]}

    def request_body(self, jpeg: bytes) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "system", "content": self.instructions}, *self.exemplar_turns,
                         self._user_turn(jpeg)],
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
            "structured_outputs": {"choice": ["Yes", "No"]},
        }
        if self.max_pixels:
            body["mm_processor_kwargs"] = {"max_pixels": self.max_pixels}
        return body

    async def _ensure_session(self) -> Any:
        import aiohttp

        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._session = aiohttp.ClientSession(headers=headers)
            self._sem = asyncio.Semaphore(self.max_concurrency)
        return self._session

    async def _ask(self, jpeg: bytes) -> float:
        import aiohttp

        session = await self._ensure_session()
        assert self._sem is not None
        async with self._sem, session.post(self.url, json=self.request_body(jpeg),
                                           timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            data = await resp.json()
        content = data["choices"][0]["logprobs"]["content"]
        return p_yes_from_logprobs(content[0])

    async def _ask_all(self, jpegs: list[bytes]) -> list[float | BaseException]:
        """One deadline for the whole batch: images still queued behind ``max_concurrency`` or unanswered
        when it passes are cancelled and reported as timeouts (they keep the earlier tiers' answer), while
        the answers that did arrive are kept."""
        tasks = [asyncio.ensure_future(self._ask(j)) for j in jpegs]
        _, pending = await asyncio.wait(tasks, timeout=self.timeout_s + 1.0)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        out: list[float | BaseException] = []
        for t in tasks:
            if t in pending:
                out.append(TimeoutError(f"no answer within the {self.timeout_s + 1.0:.1f} s batch deadline"))
            elif t.exception() is not None:
                out.append(t.exception())  # type: ignore[arg-type]
            else:
                out.append(t.result())
        return out

    def predict(self, batch: ImageBatch) -> TierOutput:
        jpegs = list(batch.payloads) if len(batch.payloads) == len(batch) else [encode_jpeg(x, 90)
                                                                               for x in batch.rgb]
        fut = asyncio.run_coroutine_threadsafe(self._ask_all(jpegs), self._loop)
        try:
            results = fut.result(self.timeout_s + 5.0)
        except concurrent.futures.TimeoutError:
            fut.cancel()  # do not leave the batch's requests running on the client loop
            raise
        out = np.full(len(batch), np.nan)
        failures: list[str] = []
        for i, r in enumerate(results):
            if isinstance(r, BaseException):
                failures.append(type(r).__name__ if not str(r) else f"{type(r).__name__}: {r}")
            else:
                out[i] = r
        if failures:
            logger.warning("vLLM tier {}: {} of {} requests failed ({})", self.name, len(failures),
                           len(batch), failures[0][:200])
        ok = np.isfinite(out)
        out[ok] = clip_prob(out[ok])
        return TierOutput(prob=out, extras={"failed": len(failures)})

    def warmup(self) -> None:
        try:
            self.predict(ImageBatch(rgb=[np.zeros((224, 224, 3), np.uint8)]))
        except Exception as e:  # the server may come up later; the cascade falls back meanwhile
            logger.warning("vLLM tier {} warm-up failed: {}", self.name, e)

    def close(self) -> None:
        async def _close() -> None:
            if self._session is not None:
                await self._session.close()

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(url=self.url, model=self.model, exemplars=len(self.exemplar_turns) // 2,
                 timeout_s=self.timeout_s)
        return d
