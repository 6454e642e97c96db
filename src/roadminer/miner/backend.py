"""The miner's HTTP server (aiohttp): SN72 ``POST /ImageSynapse``, btauth/1 ``POST /v1/roadwork``,
``GET /health`` and ``GET /metrics``.

One ``MinerBackend`` (batcher + model, chain view, nonce store, guards, colour fallback) is shared by
every hotkey the process serves; ``build_app`` makes one aiohttp app per hotkey/port over it.
Requests never see an exception: every failure maps to a status and a caller-safe message, and a model
that is late or failing is replaced by the colour-cue answer before the request deadline.

The backend also carries the state layer (``roadminer.state.layer.StateLayer``, shared with the nonce
store): a result cache keyed by image sha256 and model version is consulted before the model, and every
answer is recorded (sessions, history, hard-example queue) after the reply is on its way. The main
hotkey's app serves the dashboard at ``/dashboard/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import time
import uuid as uuid_mod
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web
from loguru import logger

from roadminer import __spec_version__, __version__
from roadminer.chain.base import ChainView
from roadminer.core.aio import cancel_and_wait
from roadminer.core.config import Settings
from roadminer.core.metrics import (
    CHAIN_CONSENSUS,
    CHAIN_EMISSION,
    CHAIN_INCENTIVE,
    CHAIN_TRUST,
    INFLIGHT,
    REQUEST_LATENCY,
    REQUESTS,
    TIER_EXITS,
    render,
)
from roadminer.imaging.decode import ImageDecodeError, ImagePolicy, b64decode_image, decode_rgb, probe_image
from roadminer.miner.batcher import MicroBatcher, predictor_version
from roadminer.miner.guards import Guards, Refusal, check_content_length
from roadminer.models.base import ImageBatch, Tier, clip_prob, needs_decoded_images
from roadminer.protocol import btauth, sn72
from roadminer.protocol.keys import HotkeySigner
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
            ttl = btauth_nonce_ttl(settings)
            nonces = (
                NonceStore(state.store, btauth_ttl_s=ttl)
                if state is not None
                else NonceStore.from_config(settings.state, btauth_ttl_s=ttl)
            )
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


BACKEND_KEY: web.AppKey[MinerBackend] = web.AppKey("backend", MinerBackend)


class MinerRoutes:
    """Route handlers of one hotkey."""

    def __init__(self, backend: MinerBackend, signer: HotkeySigner, port: int | None = None) -> None:
        self.b = backend
        self.signer = signer
        self.hotkey = signer.ss58_address
        self.port = port
        self.axon_uuid = str(uuid_mod.uuid1())
        self.version_int = sn72.version_as_int(__version__)

    # -- helpers -----------------------------------------------------------------------------------
    def _count(self, route: str, status: int, caller: str, t0: float) -> None:
        REQUESTS.labels(route=route, status=str(status), caller=caller).inc()
        REQUEST_LATENCY.labels(route=route).observe(time.perf_counter() - t0)

    @staticmethod
    def _reply(status: int, headers: dict[str, str], body: bytes) -> web.Response:
        ctype = headers.pop("Content-Type", "application/json")
        return web.Response(status=status, body=body, headers=headers, content_type=ctype)

    async def _read_body(self, request: web.Request) -> bytes | Refusal:
        limit = self.b.settings.server.max_body_bytes
        refusal = check_content_length(request.headers.get("Content-Length"), limit)
        if refusal:
            return refusal
        chunks: list[bytes] = []
        total = 0
        try:
            async for chunk in request.content.iter_any():
                total += len(chunk)
                if total > limit:
                    return Refusal(413, f"Request body exceeds the {limit}-byte limit.", "size")
                chunks.append(chunk)
        except (asyncio.IncompleteReadError, ConnectionError, web.HTTPException) as e:
            return Refusal(400, f"Could not read the request body: {type(e).__name__}.", "size")
        return b"".join(chunks)

    # -- SN72 --------------------------------------------------------------------------------------
    async def image_synapse(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        route = sn72.ROUTE
        guards = self.b.guards
        caller = "anonymous"
        synapse: sn72.ImageSynapse | None = None
        guards.shedder.enter()
        INFLIGHT.inc()
        try:
            synapse = sn72.parse_headers(request.headers)
            hotkey = synapse.dendrite.hotkey if synapse.dendrite else None
            caller = guards.blacklist.caller_class(hotkey)
            if synapse.dendrite is not None:
                synapse.dendrite.ip = request.remote
            for refusal in (guards.blacklist.check(hotkey), guards.shedder.check(hotkey)):
                if refusal:
                    raise sn72.SynapseError(refusal.status, refusal.message)
            await sn72.check_request(
                synapse,
                self.hotkey,
                self.b.nonces,
                allowed_delta_s=self.b.settings.guards.nonce_allowed_delta_s,
            )
            refusal = guards.limiter.check(f"{self.hotkey}:{hotkey}")
            if refusal:
                raise sn72.SynapseError(refusal.status, refusal.message)
            body = await self._read_body(request)
            if isinstance(body, Refusal):
                raise sn72.SynapseError(body.status, body.message)
            try:
                req = sn72.ImageSynapse.model_validate_json(body)
            except ValueError:
                raise sn72.SynapseError(
                    400, "Improperly formatted request: body is not an ImageSynapse JSON"
                ) from None
            try:
                rgb, raw = await self.b.decode(req.image)
            except ImageDecodeError as e:
                raise sn72.SynapseError(413 if "exceeds" in str(e) else 400, f"Bad image: {e}") from None
            key = _sha256(raw)
            pred = await self.b.predict(rgb, raw, self.b.deadline_budget(t0, synapse.timeout), key)
            TIER_EXITS.labels(tier=CACHE_TIER if pred.cached else pred.tier).inc()
            sn72.fill_axon(
                synapse,
                hotkey=self.hotkey,
                uuid=self.axon_uuid,
                version=self.version_int,
                status_code=200,
                status_message="Success",
                process_time=time.perf_counter() - t0,
                port=self.port,
            )
            synapse.testnet_label = req.testnet_label
            status, headers, out = sn72.success_response(synapse, pred.prob)
            self.b.observe(hotkey, raw, key, pred, t0, "sn72")
        except sn72.SynapseError as e:
            status, headers, out = self._sn72_error(synapse, e.status, e.message, t0)
        except Exception as e:  # never a trace to the caller
            logger.opt(exception=e).error("ImageSynapse handler failed")
            status, headers, out = self._sn72_error(synapse, 500, "Internal Server Error", t0)
        finally:
            guards.shedder.leave()
            INFLIGHT.dec()
        self._count(route, status, caller, t0)
        if status != 200:
            logger.debug(
                "ImageSynapse {} from {}: {}", status, caller, headers.get(sn72.HEADER_AXON_STATUS_MESSAGE)
            )
        return self._reply(status, headers, out)

    def _sn72_error(
        self, synapse: sn72.ImageSynapse | None, status: int, message: str, t0: float
    ) -> tuple[int, dict[str, str], bytes]:
        syn = synapse if synapse is not None else sn72.ImageSynapse()
        with contextlib.suppress(Exception):
            sn72.fill_axon(
                syn,
                hotkey=self.hotkey,
                uuid=self.axon_uuid,
                version=self.version_int,
                status_code=status,
                status_message=message,
                process_time=time.perf_counter() - t0,
                port=self.port,
            )
        return sn72.error_response(syn, status, message)

    async def unknown_synapse(self, request: web.Request) -> web.Response:
        name = request.match_info.get("name", "")
        msg = f"Synapse name '{name}' not found. Available synapses ['{sn72.SYNAPSE_NAME}']"
        status, headers, out = sn72.error_response(None, 404, msg)
        REQUESTS.labels(route="unknown", status="404", caller="anonymous").inc()
        return self._reply(status, headers, out)

    # -- btauth/1 ----------------------------------------------------------------------------------
    async def roadwork(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        route = self.b.settings.server.btauth_route
        guards = self.b.guards
        caller = "anonymous"
        guards.shedder.enter()
        INFLIGHT.inc()
        try:
            hotkey = btauth.claimed_hotkey(request.headers)
            caller = guards.blacklist.caller_class(hotkey)
            for refusal in (guards.blacklist.check(hotkey), guards.shedder.check(hotkey)):
                if refusal:
                    raise btauth.BtAuthError(refusal.status, refusal.kind, refusal.message)
            body = await self._read_body(request)
            if isinstance(body, Refusal):
                raise btauth.BtAuthError(body.status, body.kind, body.message)
            g = self.b.settings.guards
            sender = await btauth.verify_request(
                request.headers,
                body,
                method=request.method,
                path=request.path_qs,
                self_hotkey=self.hotkey,
                nonce_store=self.b.nonces,
                max_age=g.btauth_max_age_s,
                allowed_skew=g.btauth_allowed_skew_s,
            )
            refusal = guards.limiter.check(f"{self.hotkey}:{sender}")
            if refusal:
                raise btauth.BtAuthError(refusal.status, refusal.kind, refusal.message)
            try:
                req = btauth.RoadworkRequest.model_validate_json(body)
            except ValueError:
                raise btauth.BtAuthError(400, "bad_request", 'body must be JSON {"image": base64}') from None
            try:
                rgb, raw = await self.b.decode(req.image)
            except ImageDecodeError as e:
                raise btauth.BtAuthError(413 if "exceeds" in str(e) else 400, "bad_image", str(e)) from None
            key = _sha256(raw)
            pred = await self.b.predict(rgb, raw, self.b.deadline_budget(t0, None), key)
            TIER_EXITS.labels(tier=CACHE_TIER if pred.cached else pred.tier).inc()
            resp = btauth.RoadworkResponse(
                prediction=pred.prob,
                tier=pred.tier,
                model_version=self.b.model_version(),
                latency_ms=(time.perf_counter() - t0) * 1000,
                request_id=req.request_id,
            )
            status, out = 200, resp.model_dump_json().encode()
            self.b.observe(sender, raw, key, pred, t0, "btauth")
        except btauth.BtAuthError as e:
            status, out = e.status, btauth.error_body(e.error, e.message)
        except Exception as e:
            logger.opt(exception=e).error("btauth handler failed")
            status, out = 500, btauth.error_body("internal", "Internal Server Error")
        finally:
            guards.shedder.leave()
            INFLIGHT.dec()
        self._count(route, status, caller, t0)
        return web.Response(status=status, body=out, content_type="application/json")

    # -- ops ---------------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        info = self.b.model_info()
        me = self.b.chain.self_info(self.hotkey)
        return web.json_response(
            {
                "status": "ok",
                "hotkey": self.hotkey,
                "uid": me.uid if me else None,
                "registered": me is not None,
                "version": __version__,
                "spec_version": __spec_version__,
                "port": self.port,
                "tiers": info["tiers"],
                "model_version": info["model_version"],
                "uptime_s": round(time.time() - self.b.started_at, 3),
                "batcher": {
                    "depth": self.b.batcher.depth,
                    "batches": self.b.batcher.batches,
                    "items": self.b.batcher.items,
                },
                "inflight": self.b.guards.shedder.inflight,
                "chain": self.b.chain.describe(),
                "nonce_store": self.b.nonces.describe(),
                "state": self.b.state_info(),
                "routes": [sn72.ROUTE, self.b.settings.server.btauth_route],
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )


ROUTES_KEY: web.AppKey[MinerRoutes] = web.AppKey("routes", MinerRoutes)


def build_app(
    settings: Settings,
    backend: MinerBackend | MicroBatcher,
    chain: ChainView | None = None,
    signer: HotkeySigner | None = None,
    *,
    port: int | None = None,
    dashboard: bool = False,
    **backend_kwargs: Any,
) -> web.Application:
    """The aiohttp app of one hotkey. ``backend`` is a shared ``MinerBackend`` or, for a single-hotkey
    app, the batcher (the backend is then built from ``chain`` and ``backend_kwargs``). ``dashboard``
    mounts the dashboard at ``/dashboard/`` over the backend's state layer (when it has one)."""
    if signer is None:
        raise ValueError("build_app needs the hotkey signer")
    if isinstance(backend, MicroBatcher):
        if chain is None:
            raise ValueError("build_app needs a chain view")
        backend = MinerBackend.build(settings, backend, chain, **backend_kwargs)
    import bittensor.http_auth  # noqa: F401 - load the SDK now, not on the first btauth request

    routes = MinerRoutes(backend, signer, port)
    # The body limit is enforced by the routes (413 in each protocol's format); aiohttp's own limit
    # is a backstop only.
    app = web.Application(client_max_size=settings.server.max_body_bytes + 1024)
    app[ROUTES_KEY] = routes
    app[BACKEND_KEY] = backend
    app.router.add_post(sn72.ROUTE, routes.image_synapse)
    app.router.add_post(settings.server.btauth_route, routes.roadwork)
    app.router.add_get("/health", routes.health)
    app.router.add_get("/metrics", routes.metrics)
    if dashboard and backend.state is not None:
        from roadminer.dashboard.app import mount_dashboard

        mount_dashboard(app, backend.state, settings)
    app.router.add_post("/{name}", routes.unknown_synapse)
    return app


# --------------------------------------------------------------------------------------------------
# Running a miner in-process
# --------------------------------------------------------------------------------------------------


@dataclass
class RunningMiner:
    backend: MinerBackend
    runners: list[web.AppRunner]
    urls: list[str]
    hotkeys: list[str]
    ports: list[int]
    signers: list[HotkeySigner]
    _owned: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    state: StateLayer | None = None
    watcher: Any = None  # roadminer.miner.reload.ModelWatcher when following the registry
    chain_metrics: ChainMetricsRecorder | None = None

    @property
    def url(self) -> str:
        return self.urls[0]

    async def stop(self) -> None:
        for r in self.runners:
            with contextlib.suppress(Exception):
                await r.cleanup()
        for close in reversed(self._owned):
            with contextlib.suppress(Exception):
                await close()


def load_signers(settings: Settings) -> list[tuple[int, HotkeySigner]]:
    """(port, signer) of the main hotkey and of each ``server.extra_hotkeys`` entry."""
    from roadminer.protocol.keys import load_signer

    w = settings.wallet
    out = [(settings.server.port, load_signer(w.path, w.name, w.hotkey, w.create_if_missing))]
    for extra in settings.server.extra_hotkeys:
        out.append((extra.port, load_signer(w.path, extra.name or w.name, extra.hotkey, w.create_if_missing)))
    if len({s.ss58_address for _, s in out}) != len(out):
        raise ValueError("each served hotkey must be distinct")
    return out


def build_predictor(settings: Settings) -> Any:
    from roadminer.cascade.router import EarlyExitRouter

    router = EarlyExitRouter.from_config(settings.cascade)
    router.warmup()
    return router


async def note_model_event(state: StateLayer | None, version: str, event: str, **info: Any) -> None:
    """Add a model event to the dashboard's timeline; never raises, never waits long."""
    if state is None:
        return
    from roadminer.dashboard.data import record_model_event

    try:
        await asyncio.wait_for(record_model_event(state.store, version, event, **info), 2.0)
    except Exception as e:
        logger.warning("could not record model event {} {}: {!r}", event, version, e)


class ChainMetricsRecorder:
    """Every ``interval_s``: this miner's incentive/trust/consensus/emission (and each validator's weight
    for it) from the chain view into the state history and the on-chain gauges. Failures are logged."""

    def __init__(self, chain: ChainView, state: StateLayer | None, hotkey: str, interval_s: float) -> None:
        self.chain = chain
        self.state = state
        self.hotkey = hotkey
        self.interval_s = interval_s
        self.recorded = 0
        self._task: asyncio.Task[None] | None = None

    async def record_once(self) -> bool:
        """True when the chain knows this hotkey and the numbers were recorded."""
        from roadminer.state.history import ChainSnapshot as HistorySnapshot

        me = self.chain.self_info(self.hotkey)
        if me is None:
            return False
        CHAIN_INCENTIVE.set(me.incentive)
        CHAIN_TRUST.set(me.trust)
        CHAIN_CONSENSUS.set(me.consensus)
        CHAIN_EMISSION.set(me.emission)
        weights: dict[str, float] = {}
        for v_uid, w in self.chain.weights_for(me.uid).items():
            v = self.chain.by_uid(v_uid)
            if v is not None:
                weights[v.hotkey] = float(w)
        if self.state is not None:
            await self.state.rewards.record_chain(
                HistorySnapshot(
                    incentive=me.incentive,
                    trust=me.trust,
                    emission=me.emission,
                    consensus=me.consensus,
                    weights=weights,
                )
            )
        self.recorded += 1
        return True

    async def _run(self) -> None:
        while True:
            try:
                await self.record_once()
            except Exception as e:  # the miner outlives any chain or state hiccup
                logger.warning("recording chain metrics failed: {!r}", e)
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        if self._task is None and self.interval_s > 0:
            self._task = asyncio.create_task(self._run(), name="chain-metrics")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None


async def start_miner(
    settings: Settings,
    *,
    predictor: Any = None,
    chain: ChainView | None = None,
    signers: list[tuple[int, HotkeySigner]] | None = None,
    nonces: NonceStore | None = None,
    state: StateLayer | None = None,
) -> RunningMiner:
    """Start the miner's apps (one per hotkey/port; port 0 picks a free one) over one shared backend.

    Injected ``predictor``/``chain``/``signers``/``nonces``/``state`` replace what the settings would
    build (injected ones are not closed by ``stop``). Without an injected predictor the GPU memory plan is
    checked first (``PlanError`` on an over-committed GPU) and the model registry is followed live.
    """
    from roadminer.chain.base import build_chain
    from roadminer.core.metrics import MODEL_INFO

    owned: list[Callable[[], Awaitable[None]]] = []
    runners: list[web.AppRunner] = []
    try:
        follow_registry = predictor is None
        if follow_registry:
            from roadminer.deploy.planner import check_plan

            check_plan(settings)  # before any model is loaded
        signers = signers if signers is not None else load_signers(settings)
        if state is None:
            state = StateLayer.from_config(settings.state)
            owned.append(state.close)
            start_monitor = getattr(state.store, "start_monitor", None)
            if start_monitor is not None:  # Redis with fallback: reconnect even when no request comes
                start_monitor()
        if predictor is None:
            loop = asyncio.get_running_loop()
            predictor = await loop.run_in_executor(None, build_predictor, settings)
        b = settings.batcher
        batcher = MicroBatcher(predictor, max_batch=b.max_batch, max_wait_ms=b.max_wait_ms, workers=b.workers)
        await batcher.start()
        owned.append(batcher.stop)
        watcher = None
        if follow_registry:  # serve what `roadminer promote` put in the registry, and follow it live
            from roadminer.miner.reload import attach_hot_reload

            layer = state

            async def on_swap(version: str, generation: int) -> None:
                await note_model_event(layer, version, "loaded", source="hot-reload", generation=generation)

            watcher = await attach_hot_reload(settings, batcher, on_swap=on_swap)
            if watcher is not None:
                owned.append(watcher.stop)
        if watcher is None or watcher.swaps == 0:
            await note_model_event(state, predictor_version(batcher.predictor), "loaded", source="start")
        if chain is None:
            chain = build_chain(settings)
            await chain.start()
            owned.append(chain.stop)
        if nonces is None:  # the state layer's store keeps the nonces (shared across workers on Redis)
            nonces = NonceStore(state.store, btauth_ttl_s=btauth_nonce_ttl(settings))
        backend = MinerBackend.build(settings, batcher, chain, nonces=nonces, state=state)
        owned.append(backend.close)
        info = backend.model_info()
        MODEL_INFO.info({"version": str(info["model_version"]), "roadminer": __version__})
        recorder = ChainMetricsRecorder(chain, state, signers[0][1].ss58_address, settings.chain.metrics_interval_s)
        recorder.start()
        owned.append(recorder.stop)
        host = settings.server.host
        urls, ports = [], []
        for i, (port, signer) in enumerate(signers):
            app = build_app(
                settings, backend, signer=signer, port=port, dashboard=i == 0 and settings.dashboard.on_miner
            )
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, host, port, reuse_address=True)
            await site.start()
            bound = runner.addresses[0][1] if runner.addresses else port
            runner.app[ROUTES_KEY].port = bound
            ports.append(bound)
            urls.append(f"http://{'127.0.0.1' if host in ('0.0.0.0', '', '::') else host}:{bound}")
            logger.info(
                "miner hotkey {} serving on {}:{} ({} and {})",
                signer.ss58_address,
                host,
                bound,
                sn72.ROUTE,
                settings.server.btauth_route,
            )
        return RunningMiner(
            backend,
            runners,
            urls,
            [s.ss58_address for _, s in signers],
            ports,
            [s for _, s in signers],
            owned,
            state=state,
            watcher=watcher,
            chain_metrics=recorder,
        )
    except BaseException:
        for r in runners:
            with contextlib.suppress(Exception):
                await r.cleanup()
        for close in reversed(owned):
            with contextlib.suppress(Exception):
                await close()
        raise
