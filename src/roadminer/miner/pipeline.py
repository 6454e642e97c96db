"""The one request pipeline every protocol route runs: guard -> body -> decode -> predict -> observe.

A protocol (``roadminer.miner.routes.sn72``, ``roadminer.miner.routes.btauth``) supplies only what
differs: how the caller is named, when and how the request is authenticated (headers before the body, or
a signature over the body), how the body is parsed and how answers and refusals are written. Everything
else (load shedding, blacklist, rate limit, body limit, image limits, deadline, fallback, metrics, state
recording) happens here, once, in the same order for every protocol. Requests never see an exception:
every failure maps to a status and a caller-safe message.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from loguru import logger
from pydantic import BaseModel

from roadminer.core.metrics import INFLIGHT, REQUEST_LATENCY, REQUESTS, TIER_EXITS
from roadminer.imaging.decode import ImageDecodeError
from roadminer.miner.backend import CACHE_TIER, MinerBackend, Prediction, _sha256
from roadminer.miner.guards import Refusal, check_content_length

M = TypeVar("M", bound=BaseModel)


class RequestRefused(Exception):
    """A request answered with an error status. ``kind``: machine-readable reason (btauth's ``error``,
    the guards' metrics label); ``message``: the caller-safe text."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message

    @classmethod
    def of(cls, refusal: Refusal) -> RequestRefused:
        return cls(refusal.status, refusal.kind, refusal.message)


def parse_model(model: type[M], body: bytes, message: str) -> M:
    """``body`` validated as the protocol's pydantic ``model``; a 400 with ``message`` when it is not."""
    try:
        return model.model_validate_json(body)
    except ValueError:
        raise RequestRefused(400, "bad_request", message) from None


@dataclass
class RequestContext:
    """What the pipeline learns about one request as it goes."""

    t0: float
    hotkey: str | None = None  # the hotkey the caller claims (headers)
    sender: str | None = None  # the authenticated caller (None: anonymous)
    caller: str = "anonymous"  # metrics label of the caller's class
    timeout_s: float | None = None  # the caller's own timeout, when it says
    extra: dict[str, Any] = field(default_factory=dict)  # protocol-specific (parsed headers, request)


class ProtocolRoute(ABC):
    """The protocol-specific steps of one route."""

    protocol: str = "protocol"  # state-layer label (``sn72``, ``btauth``)
    name: str = "request"  # how the logs name this handler
    route: str = "/"
    # True: the signature covers the body, so authentication (and the rate limit keyed on the
    # authenticated caller) waits until the body is read.
    signs_body: bool = False

    @abstractmethod
    def identify(self, request: web.Request, ctx: RequestContext) -> None:
        """Set ``ctx.hotkey`` (and ``ctx.timeout_s``, ``ctx.extra``) from the headers."""

    async def authenticate(self, request: web.Request, ctx: RequestContext, body: bytes | None) -> None:  # noqa: B027
        """Check the caller's signature and nonce; set ``ctx.sender``. Called with ``body=None`` before
        the body is read (``signs_body`` False) or with the body (``signs_body`` True). Raises
        ``RequestRefused``."""

    @abstractmethod
    def limit_key(self, ctx: RequestContext) -> str:
        """The rate limiter's key of this caller."""

    @abstractmethod
    def parse(self, body: bytes, ctx: RequestContext) -> str:
        """The base64 image of the request body (``RequestRefused`` when the body is malformed)."""

    @abstractmethod
    def answer(self, ctx: RequestContext, pred: Prediction) -> web.Response:
        """The success response."""

    @abstractmethod
    def refuse(self, ctx: RequestContext, err: RequestRefused) -> web.Response:
        """The error response of ``err``."""

    def bad_image(self, err: ImageDecodeError) -> RequestRefused:
        return RequestRefused(413 if "exceeds" in str(err) else 400, "bad_image", str(err))


class RequestPipeline:
    """Runs one ``ProtocolRoute`` over the shared backend."""

    def __init__(self, backend: MinerBackend) -> None:
        self.b = backend

    async def handle(self, request: web.Request, proto: ProtocolRoute) -> web.Response:
        ctx = RequestContext(t0=time.perf_counter())
        guards = self.b.guards
        guards.shedder.enter()
        INFLIGHT.inc()
        try:
            proto.identify(request, ctx)
            ctx.caller = guards.blacklist.caller_class(ctx.hotkey)
            for refusal in (guards.blacklist.check(ctx.hotkey), guards.shedder.check(ctx.hotkey)):
                if refusal:
                    raise RequestRefused.of(refusal)
            if not proto.signs_body:
                await proto.authenticate(request, ctx, None)
                self._limit(proto, ctx)
            body = await self.read_body(request)
            if isinstance(body, Refusal):
                raise RequestRefused.of(body)
            if proto.signs_body:
                await proto.authenticate(request, ctx, body)
                self._limit(proto, ctx)
            image_b64 = proto.parse(body, ctx)
            try:
                rgb, raw = await self.b.decode(image_b64)
            except ImageDecodeError as e:
                raise proto.bad_image(e) from None
            key = _sha256(raw)
            pred = await self.b.predict(rgb, raw, self.b.deadline_budget(ctx.t0, ctx.timeout_s), key)
            TIER_EXITS.labels(tier=CACHE_TIER if pred.cached else pred.tier).inc()
            resp = proto.answer(ctx, pred)
            self.b.observe(ctx.sender, raw, key, pred, ctx.t0, proto.protocol)
        except RequestRefused as e:
            resp = proto.refuse(ctx, e)
        except Exception as e:  # never a trace to the caller
            logger.opt(exception=e).error("{} handler failed", proto.name)
            resp = proto.refuse(ctx, RequestRefused(500, "internal", "Internal Server Error"))
        finally:
            guards.shedder.leave()
            INFLIGHT.dec()
        self.count(proto.route, resp.status, ctx.caller, ctx.t0)
        return resp

    def _limit(self, proto: ProtocolRoute, ctx: RequestContext) -> None:
        refusal = self.b.guards.limiter.check(proto.limit_key(ctx))
        if refusal:
            raise RequestRefused.of(refusal)

    async def read_body(self, request: web.Request) -> bytes | Refusal:
        """The body, or the refusal when it is over the limit or cannot be read."""
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

    @staticmethod
    def count(route: str, status: int, caller: str, t0: float) -> None:
        REQUESTS.labels(route=route, status=str(status), caller=caller).inc()
        REQUEST_LATENCY.labels(route=route).observe(time.perf_counter() - t0)
