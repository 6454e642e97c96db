"""btauth/1 (``bittensor.http_auth``) ``POST /v1/roadwork``: the signature covers the body, so the
caller is authenticated (and rate limited) once the body is read; errors are JSON ``{error, message}``."""

from __future__ import annotations

import time

from aiohttp import web

from roadminer.miner.backend import MinerBackend, Prediction
from roadminer.miner.pipeline import ProtocolRoute, RequestContext, RequestRefused, parse_model
from roadminer.protocol import btauth

BAD_BODY = 'body must be JSON {"image": base64}'


class BtAuthRoute(ProtocolRoute):
    protocol = "btauth"
    name = "btauth"
    signs_body = True

    def __init__(self, backend: MinerBackend, hotkey: str) -> None:
        self.b = backend
        self.hotkey = hotkey
        self.route = backend.settings.server.btauth_route

    def identify(self, request: web.Request, ctx: RequestContext) -> None:
        ctx.hotkey = btauth.claimed_hotkey(request.headers)

    async def authenticate(self, request: web.Request, ctx: RequestContext, body: bytes | None) -> None:
        g = self.b.settings.guards
        try:
            ctx.sender = await btauth.verify_request(
                request.headers,
                body or b"",
                method=request.method,
                path=request.path_qs,
                self_hotkey=self.hotkey,
                nonce_store=self.b.nonces,
                max_age=g.btauth_max_age_s,
                allowed_skew=g.btauth_allowed_skew_s,
            )
        except btauth.BtAuthError as e:
            raise RequestRefused(e.status, e.error, e.message) from None

    def limit_key(self, ctx: RequestContext) -> str:
        return f"{self.hotkey}:{ctx.sender}"

    def parse(self, body: bytes, ctx: RequestContext) -> str:
        req = parse_model(btauth.RoadworkRequest, body, BAD_BODY)
        ctx.extra["request_id"] = req.request_id
        return req.image

    def answer(self, ctx: RequestContext, pred: Prediction) -> web.Response:
        resp = btauth.RoadworkResponse(
            prediction=pred.prob,
            tier=pred.tier,
            model_version=self.b.model_version(),
            latency_ms=(time.perf_counter() - ctx.t0) * 1000,
            request_id=ctx.extra.get("request_id"),
        )
        return web.Response(status=200, body=resp.model_dump_json().encode(), content_type="application/json")

    def refuse(self, ctx: RequestContext, err: RequestRefused) -> web.Response:
        return web.Response(
            status=err.status, body=btauth.error_body(err.kind, err.message), content_type="application/json"
        )
