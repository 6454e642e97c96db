"""Small asyncio utilities shared by the background loops (chain sync, metrics recorders, watchers)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished; its cancellation is not re-raised."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def repeat_forever(interval_s: float, step: Callable[[], Awaitable[Any]], what: str) -> None:
    """Await ``step()`` every ``interval_s`` seconds until cancelled; a failing step is logged, never fatal
    (a background recorder must outlive any chain or state hiccup)."""
    while True:
        try:
            await step()
        except Exception as e:
            logger.warning("{} failed: {!r}", what, e)
        await asyncio.sleep(interval_s)
