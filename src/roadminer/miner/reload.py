"""Hot reload: the running miner follows the registry's served versions without a restart.

``ModelWatcher`` polls ``current.json``'s generation; on a change it builds and warms the new cascade on a
worker thread (requests keep flowing to the old one meanwhile), then swaps it into the micro-batcher.
Batches already running finish on the old cascade, which is closed after a grace period. A cascade that
fails to build is logged and the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from loguru import logger

from roadminer.core.aio import cancel_and_wait
from roadminer.lifecycle.registry import ModelRegistry, build_router


class ModelWatcher:
    def __init__(
        self,
        registry: ModelRegistry,
        batcher: Any,
        build: Callable[[], Any],
        poll_s: float = 5.0,
        grace_s: float = 10.0,
        on_swap: Callable[[str, int], Awaitable[None]] | None = None,
    ) -> None:
        self.registry = registry
        # Awaited with (version, generation) after each swap (the miner notes it on the model timeline).
        self.on_swap = on_swap
        self.batcher = batcher
        self.build = build
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.generation = registry.generation()
        self.swaps = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._closers: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    @classmethod
    def for_settings(cls, settings: Any, batcher: Any) -> ModelWatcher:
        registry = ModelRegistry(settings.learning.models_dir)
        return cls(
            registry, batcher, lambda: build_router(settings, registry), settings.learning.reload_poll_s
        )

    async def check(self) -> bool:
        """Swap when the served versions changed; True when a swap happened."""
        async with self._lock:
            gen = self.registry.generation()
            if gen == self.generation or gen < 0:
                return False
            try:
                new = await asyncio.to_thread(self.build)
            except Exception as e:
                self.failures += 1
                self.generation = gen  # do not rebuild the same broken generation on every poll
                logger.opt(exception=e).error(
                    "hot reload to generation {} failed; the old model keeps serving", gen
                )
                return False
            old = self.batcher.predictor
            self.batcher.swap_predictor(new)
            self.generation = gen
            self.swaps += 1
            from roadminer.core.metrics import MODEL_INFO

            version = str(getattr(new, "version", type(new).__name__))
            with contextlib.suppress(Exception):
                MODEL_INFO.info({"version": version})
            logger.info("hot reload: now serving {} (generation {})", version, gen)
            if self.on_swap is not None:
                try:
                    await self.on_swap(version, gen)
                except Exception as e:  # a listener never undoes a swap
                    logger.warning("hot reload listener failed: {!r}", e)
            if hasattr(old, "close") and old is not new:
                task = asyncio.create_task(self._close_later(old))
                self._closers.add(task)
                task.add_done_callback(self._closers.discard)
            return True

    async def _close_later(self, old: Any) -> None:
        await asyncio.sleep(self.grace_s)
        await asyncio.to_thread(old.close)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.check()
            except Exception as e:  # the watcher must outlive any single failure
                logger.opt(exception=e).warning("model watcher poll failed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="model-watcher")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        for t in list(self._closers):
            t.cancel()


async def attach_hot_reload(
    settings: Any, batcher: Any, on_swap: Callable[[str, int], Awaitable[None]] | None = None
) -> ModelWatcher | None:
    """Follow the registry (``learning.models_dir``): when it serves a version, swap to it now (before the
    first request); then swap on every later promotion, the first one on a fresh node included (the
    folder need not exist yet). ``on_swap(version, generation)`` is awaited after every swap."""
    root = settings.learning.models_dir
    watcher = ModelWatcher.for_settings(settings, batcher)
    watcher.on_swap = on_swap
    if (Path(root) / "current.json").is_file():
        watcher.generation = -2  # force the first check to load what the registry serves
        await watcher.check()
    else:
        watcher.generation = 0  # nothing promoted yet: the configured model serves until a promotion
    watcher.start()
    return watcher
