"""The miner's backend: one ``MinerBackend`` (batcher + model, chain view, nonce store, guards, colour
fallback) shared by every hotkey the process serves (``roadminer.miner.app.build_app`` makes one aiohttp
app per hotkey/port over it). A model that is late or failing is replaced by the colour-cue answer before
the request deadline.

The backend also carries the state layer (``roadminer.state.layer.StateLayer``, shared with the nonce
store): a result cache keyed by image sha256 and model version is consulted before the model, and every
answer is recorded (sessions, history, hard-example queue) after the reply is on its way. The main
hotkey's app serves the dashboard at ``/dashboard/``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from loguru import logger

from roadminer.chain.base import ChainView
from roadminer.core.config import Settings
from roadminer.imaging.decode import ImagePolicy, b64decode_image, decode_rgb, probe_image
from roadminer.miner.batcher import MicroBatcher, predictor_version
from roadminer.miner.guards import Guards
from roadminer.models.base import ImageBatch, Tier, clip_prob, needs_decoded_images
from roadminer.state.layer import RequestInfo, StateLayer
from roadminer.state.nonce import NonceStore

# Time kept back from the request deadline to compute and send the fallback answer.
FALLBACK_RESERVE_S = 0.3
# Margin under the caller's own timeout (the Dendrite gives up at exactly ``timeout``).
CALLER_TIMEOUT_MARGIN_S = 0.5
NO_ANSWER_PROB = 0.5 - 1e-3  # leans "no roadwork" on the validator's rounding tie
# Longest a result-cache look-up may take out of the model's budget (a slow Redis must not cost the answer).
CACHE_LOOKUP_MAX_S = 0.25
# Background writes (cache puts) kept in flight at most; more are dropped rather than queued.
MAX_BACKGROUND = 1000
# Exit-tier label of answers served from the result cache.
CACHE_TIER = "cache"


def _sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def btauth_nonce_ttl(settings: Settings) -> float:
    """How long btauth/1 nonces are kept: at least the freshness window (``http_auth`` refuses to
    verify with a store that forgets sooner, which would fail every request)."""
    g = settings.guards
    return max(60.0, g.btauth_max_age_s + g.btauth_allowed_skew_s + 1.0)


def check_nonce_retention(nonces: NonceStore, settings: Settings) -> None:
    """Refuse to serve with a nonce store that forgets nonces inside either protocol's replay window."""
    g = settings.guards
    nonces.check_retention(
        sn72_window_s=g.nonce_allowed_delta_s + g.sn72_max_timeout_s,
        btauth_window_s=g.btauth_max_age_s + g.btauth_allowed_skew_s,
    )


@dataclass
class Prediction:
    prob: float
    tier: str
    fallback: bool = False
    cached: bool = False
    tier_probs: dict[str, float] = field(default_factory=dict)
    model_version: str = ""


@dataclass
class MinerBackend:
    """Everything the routes share, whatever hotkey they answer for."""

    settings: Settings
    batcher: MicroBatcher
    chain: ChainView
    nonces: NonceStore
    guards: Guards
    fallback: Tier | None = None
    policy: ImagePolicy = field(default_factory=ImagePolicy)
    state: StateLayer | None = None
    started_at: float = field(default_factory=time.time)
    announcer: Any = None  # roadminer.chain.announce.AxonAnnouncer when the chain publishes axons
    worker: tuple[int, int] | None = None  # (index, count) of this process among server.workers
    _decode_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="roadminer-decode")
    )
    _background: set[asyncio.Task[Any]] = field(default_factory=set)

    @classmethod
    def build(
        cls,
        settings: Settings,
        batcher: MicroBatcher,
        chain: ChainView,
        *,
        nonces: NonceStore | None = None,
        guards: Guards | None = None,
        fallback: Tier | None = None,
        state: StateLayer | None = None,
    ) -> MinerBackend:
        """``state``: the miner's state layer (result cache, sessions, queue); its store also keeps the
        nonces unless ``nonces`` is given. Without it the backend answers statelessly."""
        if fallback is None:
            from roadminer.models.colour import ColourCueTier

            fallback = ColourCueTier(name="colour-fallback")
        if nonces is None:
            ttls = {"btauth_ttl_s": btauth_nonce_ttl(settings), "endpoint_ttl_s": settings.guards.nonce_endpoint_ttl_s}
            nonces = (
                NonceStore(state.store, **ttls)
                if state is not None
                else NonceStore.from_config(settings.state, **ttls)
            )
        check_nonce_retention(nonces, settings)
        return cls(
            settings=settings,
            batcher=batcher,
            chain=chain,
            nonces=nonces,
            guards=guards or Guards.build(chain, settings.guards),
            fallback=fallback,
            policy=ImagePolicy.from_config(settings.images),
            state=state,
        )

    def __post_init__(self) -> None:
        self.batcher.decoder = functools.partial(decode_rgb, policy=self.policy)

    async def decode(self, image_b64: str) -> tuple[np.ndarray | None, bytes]:
        """base64 -> bytes, format and size limits checked. The pixels are decoded here only when the
        model's first step reads them; tiers that decode the payload themselves (``needs_rgb = False``)
        get ``None`` (decoded later, only if a tier or the fallback reads it)."""
        raw = b64decode_image(image_b64, self.policy)
        if not needs_decoded_images(self.batcher.predictor):
            probe_image(raw, self.policy)  # header only: format, side and pixel limits
            return None, raw
        loop = asyncio.get_running_loop()
        rgb = await loop.run_in_executor(self._decode_pool, decode_rgb, raw, self.policy)
        return rgb, raw

    def model_version(self) -> str:
        return predictor_version(self.batcher.predictor)

    @property
    def cache_enabled(self) -> bool:
        return self.state is not None and self.settings.state.result_cache_ttl_s > 0

    async def cache_get(self, key: str, timeout_s: float) -> Prediction | None:
        """The cached answer of this image under the model serving now (None: miss, off or too slow)."""
        if not self.cache_enabled or timeout_s <= 0:
            return None
        assert self.state is not None
        version = self.model_version()
        try:
            hit = await asyncio.wait_for(self.state.cache.get(key, version), timeout_s)
        except Exception as e:  # a cache outage costs the look-up, never the answer
            logger.debug("result cache look-up failed: {!r}", e)
            return None
        if hit is None:
            return None
        return Prediction(float(clip_prob(hit.prob)), hit.tier, cached=True, model_version=hit.model_version)

    def cache_put_soon(self, key: str, pred: Prediction) -> None:
        """Store a model answer in the background (under the version of the model that gave it)."""
        if not self.cache_enabled or pred.fallback or pred.cached or pred.tier.startswith("fallback"):
            return
        if len(self._background) >= MAX_BACKGROUND:
            return
        assert self.state is not None
        task = asyncio.get_running_loop().create_task(
            self.state.cache.put(key, pred.model_version or self.model_version(), pred.prob, pred.tier)
        )
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("result cache write failed: {!r}", task.exception())

    def observe(
        self, caller: str | None, raw: bytes, key: str, pred: Prediction, t0: float, protocol: str
    ) -> None:
        """Record an answered request in the state layer (scheduled; never delays or fails the reply)."""
        if self.state is None:
            return
        try:
            self.state.observe_soon(
                RequestInfo(
                    validator=caller or "anonymous",
                    image_hash=key,
                    payload=raw,
                    latency_ms=(time.perf_counter() - t0) * 1000,
                    protocol=protocol,
                    label=None,
                ),
                pred,
                pred.tier_probs,
            )
        except Exception as e:
            logger.opt(exception=e).warning("could not record the request in the state layer")

    async def predict(
        self, rgb: np.ndarray | None, raw: bytes, budget_s: float, key: str | None = None
    ) -> Prediction:
        """The cached answer, else the cascade's if it comes within ``budget_s``, else the colour
        fallback's. ``key``: sha256 hex of ``raw`` (computed when missing)."""
        key = key or _sha256(raw)
        if budget_s > 0.01:
            t_start = time.perf_counter()
            hit = await self.cache_get(key, min(CACHE_LOOKUP_MAX_S, budget_s * 0.25))
            if hit is not None:
                return hit
            budget_s -= time.perf_counter() - t_start
        if budget_s > 0.01:
            try:
                ans = await asyncio.wait_for(self.batcher.submit(rgb, raw, key), budget_s)
                pred = Prediction(
                    float(clip_prob(ans.prob)),
                    ans.tier,
                    tier_probs=dict(ans.tier_probs),
                    model_version=ans.model_version,
                )
                self.cache_put_soon(key, pred)
                return pred
            except TimeoutError:
                logger.warning(
                    "model missed the {:.2f}s budget; answering with the colour fallback", budget_s
                )
            except Exception as e:  # the batcher shields tiers; this is the last line
                logger.opt(exception=e).error("model call failed; answering with the colour fallback")
        return await self.fallback_predict(rgb, raw)

    async def fallback_predict(self, rgb: np.ndarray | None, raw: bytes = b"") -> Prediction:
        """The fallback tier's answer (``rgb`` None: decoded from ``raw`` first, off the event loop)."""
        if self.fallback is not None:
            loop = asyncio.get_running_loop()
            batch = ImageBatch([rgb], [raw], decoder=functools.partial(decode_rgb, policy=self.policy))
            try:
                out = await asyncio.wait_for(
                    loop.run_in_executor(self._decode_pool, self.fallback.predict, batch),
                    FALLBACK_RESERVE_S * 0.8,
                )
                return Prediction(float(clip_prob(out.prob[0])), "fallback:" + self.fallback.name, True)
            except Exception as e:
                logger.opt(exception=e).error("fallback tier failed")
        return Prediction(NO_ANSWER_PROB, "fallback:none", True)

    def deadline_budget(self, t0: float, caller_timeout_s: float | None) -> float:
        limit = self.settings.server.request_deadline_s
        if caller_timeout_s:
            limit = min(limit, caller_timeout_s - CALLER_TIMEOUT_MARGIN_S)
        return limit - (time.perf_counter() - t0) - FALLBACK_RESERVE_S

    def model_info(self) -> dict[str, Any]:
        pred = self.batcher.predictor
        tiers = pred.describe() if hasattr(pred, "describe") else []
        return {"tiers": tiers, "model_version": predictor_version(pred)}

    def state_info(self) -> dict[str, Any] | None:
        st = self.state
        if st is None:
            return None
        describe = getattr(st.store, "describe", None)
        return {
            "backend": describe() if describe else type(st.store).__name__,
            "observed": st.observed,
            "queued": st.queued,
            "errors": st.errors,
            "dropped": st.dropped,
            "result_cache": self.cache_enabled,
        }

    async def close(self) -> None:
        if self._background:
            await asyncio.wait(list(self._background), timeout=2.0)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
