"""The miner's state, assembled from settings, and the hook it calls after every answer.

Wiring in the miner (serving)::

    state = StateLayer.from_config(settings.state)
    ...
    answer = await batcher.submit(rgb, payload, key)
    state.observe_soon(RequestInfo(validator=hotkey, image_hash=key, payload=payload,
                                   latency_ms=elapsed_ms), answer, tier_probs)  # or: await state.observe(...)
    ...
    await state.close()

``observe`` never raises: state is a side effect and must not fail a request.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from loguru import logger

from roadminer.state.history import MetricHistory, RewardTracker
from roadminer.state.queue import HardExamplePolicy, HardExampleQueue
from roadminer.state.sessions import RequestRecord, ResultCache, SessionStore
from roadminer.state.store import StateStore, build_store


@dataclass
class RequestInfo:
    validator: str  # caller hotkey (ss58)
    image_hash: str  # sha256 hex of the encoded image as received
    payload: bytes = b""  # the encoded image (queued when the answer is a hard example)
    latency_ms: float = 0.0
    protocol: str = "sn72"
    label: int | None = None  # known for simulator traffic or published validator results


class AnswerLike(Protocol):
    prob: float
    tier: str


class StateLayer:
    def __init__(
        self,
        store: StateStore,
        session_history: int = 500,
        cache_ttl_s: float = 3600.0,
        retention_s: float = 30 * 86400.0,
        queue: HardExampleQueue | None = None,
        policy: HardExamplePolicy | None = None,
    ) -> None:
        self.store = store
        self.sessions = SessionStore(store, session_history)
        self.cache = ResultCache(store, cache_ttl_s)
        self.history = MetricHistory(store, retention_s)
        self.rewards = RewardTracker(store, self.history)
        self.queue = queue or HardExampleQueue(store)
        self.policy = policy or HardExamplePolicy()
        self.observed = 0
        self.queued = 0
        self.errors = 0
        self.dropped = 0
        self._pending: set[asyncio.Task[list[str]]] = set()

    @classmethod
    def from_config(cls, cfg: Any, store: StateStore | None = None) -> StateLayer:
        """``cfg``: ``roadminer.core.config.StateConfig``."""
        store = store or build_store(cfg)
        queue = HardExampleQueue(
            store, cfg.queue_max_entries, cfg.queue_max_image_bytes, cfg.queue_image_ttl_days * 86400.0
        )
        policy = HardExamplePolicy(
            low_margin=cfg.queue_low_margin,
            disagreement=cfg.queue_disagreement,
            vlm_tiers=tuple(cfg.queue_vlm_tiers),
            low_reward=cfg.queue_low_reward,
        )
        return cls(
            store,
            cfg.session_history,
            cfg.result_cache_ttl_s,
            cfg.history_retention_days * 86400.0,
            queue,
            policy,
        )

    async def observe(
        self, info: RequestInfo, answer: AnswerLike, tier_probs: Mapping[str, float] | None = None
    ) -> list[str]:
        """Record the request in the validator's session, score it when the label is known, and queue
        it as a hard example when a reason fires. Returns the reasons (empty when not queued)."""
        self.observed += 1
        try:
            prob = float(answer.prob)
            tp = {
                k: float(v)
                for k, v in (tier_probs or {}).items()
                if v is not None and math.isfinite(float(v))
            }
            await self.sessions.record(
                info.validator,
                RequestRecord(
                    image_hash=info.image_hash,
                    prob=prob,
                    tier=answer.tier,
                    latency_ms=float(info.latency_ms),
                    ts=time.time(),
                    protocol=info.protocol,
                    label=info.label,
                ),
            )
            if info.label is not None:
                await self.rewards.record_outcome(info.validator, prob, int(info.label))
            trend = await self.rewards.reward_trend(info.validator) if self.policy.low_reward > 0 else None
            reasons = self.policy.reasons(prob, answer.tier, tp, info.label, trend)
            if reasons and info.payload:
                entry = await self.queue.enqueue(
                    info.payload,
                    reasons,
                    prob,
                    answer.tier,
                    tp,
                    info.label,
                    info.validator,
                    info.image_hash or None,
                )
                self.queued += int(entry is not None)
            return reasons
        except Exception as e:  # state is a side effect: never fail the request
            self.errors += 1
            logger.opt(exception=e).warning("state observe failed for {}", info.image_hash[:12])
            return []

    def observe_soon(
        self,
        info: RequestInfo,
        answer: AnswerLike,
        tier_probs: Mapping[str, float] | None = None,
        max_pending: int = 1000,
    ) -> bool:
        """Schedule ``observe`` without delaying the reply; dropped (False) when too many are pending."""
        if len(self._pending) >= max_pending:
            self.dropped += 1
            return False
        task = asyncio.get_running_loop().create_task(self.observe(info, answer, tier_probs))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return True

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        await self.store.close()
