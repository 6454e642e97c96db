"""The aiohttp app of one hotkey: SN72 ``POST /ImageSynapse``, btauth/1 ``POST /v1/roadwork``,
``GET /health``, ``GET /metrics`` and (main hotkey) the dashboard, over a shared ``MinerBackend``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from roadminer.chain.base import ChainView
from roadminer.core.config import Settings
from roadminer.miner.backend import MinerBackend
from roadminer.miner.batcher import MicroBatcher
from roadminer.miner.pipeline import RequestPipeline
from roadminer.miner.routes.btauth import BtAuthRoute
from roadminer.miner.routes.ops import health_info, metrics
from roadminer.miner.routes.sn72 import Sn72Route, unknown_synapse
from roadminer.protocol import sn72
from roadminer.protocol.keys import HotkeySigner

BACKEND_KEY: web.AppKey[MinerBackend] = web.AppKey("backend", MinerBackend)


class MinerRoutes:
    """The route handlers of one hotkey: both protocols run the one request pipeline."""

    def __init__(self, backend: MinerBackend, signer: HotkeySigner, port: int | None = None) -> None:
        self.b = backend
        self.signer = signer
        self.hotkey = signer.ss58_address
        self.pipeline = RequestPipeline(backend)
        self.sn72 = Sn72Route(backend, self.hotkey, port)
        self.btauth = BtAuthRoute(backend, self.hotkey)

    @property
    def port(self) -> int | None:
        return self.sn72.port

    @port.setter
    def port(self, value: int | None) -> None:
        self.sn72.port = value  # the axon headers name the bound port

    async def image_synapse(self, request: web.Request) -> web.Response:
        return await self.pipeline.handle(request, self.sn72)

    async def roadwork(self, request: web.Request) -> web.Response:
        return await self.pipeline.handle(request, self.btauth)

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(health_info(self.b, self.hotkey, self.port))


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
    routes = MinerRoutes(backend, signer, port)
    # The body limit is enforced by the routes (413 in each protocol's format); aiohttp's own limit
    # is a backstop only.
    app = web.Application(client_max_size=settings.server.max_body_bytes + 1024)
    app[ROUTES_KEY] = routes
    app[BACKEND_KEY] = backend
    app.router.add_post(sn72.ROUTE, routes.image_synapse)
    app.router.add_post(settings.server.btauth_route, routes.roadwork)
    app.router.add_get("/health", routes.health)
    app.router.add_get("/metrics", metrics)
    if dashboard and backend.state is not None:
        from roadminer.dashboard.app import mount_dashboard

        mount_dashboard(app, backend.state, settings)
    app.router.add_post("/{name}", unknown_synapse)
    return app
