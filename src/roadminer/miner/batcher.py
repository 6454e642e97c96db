"""Async micro-batcher: requests wait at most ``max_wait_ms`` to share one model call of up to
``max_batch`` images. Model work runs on a dedicated thread so the event loop keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from loguru import logger

from roadminer.cascade.router import CascadeResult
from roadminer.core.metrics import BATCH_SIZE, BATCHER_DEPTH, MODEL_LATENCY, TIER_ERRORS
from roadminer.models.base import ImageBatch


class Predictor(Protocol):
    def predict(self, batch: ImageBatch) -> CascadeResult: ...


@dataclass
class Answer:
    prob: float
    tier: str
    batch_size: int
    queue_ms: float
    model_ms: float
    # Each tier's own probability for this image; tiers that did not run (early exit, failure) are absent.
    tier_probs: dict[str, float] = field(default_factory=dict)
    model_version: str = ""  # version of the predictor that answered (result-cache key)


def predictor_version(predictor: Any) -> str:
    return str(getattr(predictor, "version", type(predictor).__name__))


def answer_tier_probs(result: CascadeResult, i: int) -> dict[str, float]:
    """Tier probabilities of image ``i``, skipping NaN (the tier did not answer for it)."""
    out: dict[str, float] = {}
    for name, probs in result.tier_probs.items():
        try:
            v = float(probs[i])
        except (IndexError, TypeError, ValueError):
            continue
        if np.isfinite(v):
            out[name] = v
    return out


@dataclass
class _Item:
    rgb: np.ndarray | None  # None: decoded by the tier that reads it (``ImageBatch.decoder``)
    payload: bytes
    key: str
    future: asyncio.Future[Answer]
    enqueued: float


class MicroBatcher:
    def __init__(
        self, predictor: Predictor, max_batch: int = 64, max_wait_ms: float = 2.0, workers: int = 1
    ) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._queue: asyncio.Queue[_Item] | None = None
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="roadminer-infer")
        self._tasks: list[asyncio.Task[None]] = []
        self._workers = workers
        self.batches = 0
        self.items = 0
        # Decodes payloads submitted without ``rgb`` when a tier reads them (policy-checked, raises
        # ``ImageDecodeError``); set by the server.
        self.decoder: Callable[[bytes], np.ndarray] | None = None

    def swap_predictor(self, predictor: Predictor) -> None:
        """Hot reload: batches already running finish on the old predictor; new ones use this one."""
        self.predictor = predictor

    async def start(self) -> None:
        if self._tasks:
            return
        self._queue = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._run(), name=f"batcher-{i}") for i in range(self._workers)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue else 0

    async def submit(self, rgb: np.ndarray | None, payload: bytes = b"", key: str = "") -> Answer:
        """``rgb`` None: the image is decoded from ``payload`` only if a tier reads ``rgb``."""
        if self._queue is None:
            raise RuntimeError("batcher not started")
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(rgb, payload, key, fut, time.perf_counter()))
        return await fut

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            items = [first]
            deadline = time.perf_counter() + self.max_wait
            while len(items) < self.max_batch:
                timeout = deadline - time.perf_counter()
                if timeout <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self._queue.get(), timeout))
                except TimeoutError:
                    break
            items = [it for it in items if not it.future.done()]  # drop requests cancelled while queued
            if not items:
                continue
            batch = ImageBatch(rgb=[it.rgb for it in items], payloads=[it.payload for it in items],
                               keys=[it.key for it in items], decoder=self.decoder)
            t0 = time.perf_counter()
            predictor = self.predictor
            try:
                result = await loop.run_in_executor(self._executor, predictor.predict, batch)
            except Exception as e:  # the router already shields tier failures; this is a last resort
                logger.opt(exception=e).error("batch of {} failed", len(items))
                n = len(items)
                result = CascadeResult(prob=np.full(n, 0.5 - 1e-3), exit_tier=["fallback"] * n,
                                       errors=[f"cascade: {type(e).__name__}"])
            model_ms = (time.perf_counter() - t0) * 1000
            self.batches += 1
            self.items += len(items)
            BATCH_SIZE.observe(len(items))
            MODEL_LATENCY.observe(model_ms / 1000)
            BATCHER_DEPTH.set(self._queue.qsize())
            for err in result.errors:  # "tier: what" per failing tier (the router answered from earlier tiers)
                TIER_ERRORS.labels(tier=err.partition(":")[0].strip() or "unknown").inc()
            try:
                version = predictor_version(predictor)
                for i, it in enumerate(items):
                    if not it.future.done():
                        it.future.set_result(Answer(float(result.prob[i]), result.exit_tier[i], len(items),
                                                    (t0 - it.enqueued) * 1000, model_ms,
                                                    answer_tier_probs(result, i), version))
            except Exception as e:  # a malformed result (too few answers) must not end this worker
                logger.opt(exception=e).error("batch of {} returned an unusable result", len(items))
                for it in items:
                    if not it.future.done():
                        it.future.set_exception(RuntimeError(f"model result unusable: {type(e).__name__}"))
