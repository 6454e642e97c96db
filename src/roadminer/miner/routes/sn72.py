"""SN72 ``POST /ImageSynapse``: the dendrite's headers are checked (signature over
``nonce.dendrite.axon.uuid.body_hash``, nonce window) before the body is read; answers and refusals
carry the axon's headers the way bittensor's axon writes them."""

from __future__ import annotations

import contextlib
import time
import uuid as uuid_mod

from aiohttp import web
from loguru import logger

from roadminer import __version__
from roadminer.core.metrics import REQUESTS
from roadminer.imaging.decode import ImageDecodeError
from roadminer.miner.backend import MinerBackend, Prediction
from roadminer.miner.pipeline import ProtocolRoute, RequestContext, RequestRefused, parse_model
from roadminer.protocol import sn72

BAD_BODY = "Improperly formatted request: body is not an ImageSynapse JSON"


def reply(status: int, headers: dict[str, str], body: bytes) -> web.Response:
    ctype = headers.pop("Content-Type", "application/json")
    return web.Response(status=status, body=body, headers=headers, content_type=ctype)


class Sn72Route(ProtocolRoute):
    protocol = "sn72"
    name = "ImageSynapse"
    route = sn72.ROUTE
    signs_body = False

    def __init__(self, backend: MinerBackend, hotkey: str, port: int | None = None) -> None:
        self.b = backend
        self.hotkey = hotkey
        self.port = port
        self.axon_uuid = str(uuid_mod.uuid1())
        self.version_int = sn72.version_as_int(__version__)

    def identify(self, request: web.Request, ctx: RequestContext) -> None:
        try:
            synapse = sn72.parse_headers(request.headers)
        except sn72.SynapseError as e:
            raise RequestRefused(e.status, "bad_request", e.message) from None
        ctx.extra["synapse"] = synapse
        ctx.hotkey = synapse.dendrite.hotkey if synapse.dendrite else None
        ctx.timeout_s = synapse.timeout
        if synapse.dendrite is not None:
            synapse.dendrite.ip = request.remote

    async def authenticate(self, request: web.Request, ctx: RequestContext, body: bytes | None) -> None:
        try:
            await sn72.check_request(
                ctx.extra["synapse"],
                self.hotkey,
                self.b.nonces,
                allowed_delta_s=self.b.settings.guards.nonce_allowed_delta_s,
                max_timeout_s=self.b.settings.guards.sn72_max_timeout_s,
            )
        except sn72.SynapseError as e:
            raise RequestRefused(e.status, "auth", e.message) from None
        ctx.sender = ctx.hotkey

    def limit_key(self, ctx: RequestContext) -> str:
        return f"{self.hotkey}:{ctx.hotkey}"

    def parse(self, body: bytes, ctx: RequestContext) -> str:
        req = parse_model(sn72.ImageSynapse, body, BAD_BODY)
        ctx.extra["testnet_label"] = req.testnet_label
        return req.image

    def bad_image(self, err: ImageDecodeError) -> RequestRefused:
        return RequestRefused(413 if "exceeds" in str(err) else 400, "bad_image", f"Bad image: {err}")

    def _fill(self, synapse: sn72.ImageSynapse, status: int, message: str, t0: float) -> None:
        sn72.fill_axon(
            synapse,
            hotkey=self.hotkey,
            uuid=self.axon_uuid,
            version=self.version_int,
            status_code=status,
            status_message=message,
            process_time=time.perf_counter() - t0,
            port=self.port,
        )

    def answer(self, ctx: RequestContext, pred: Prediction) -> web.Response:
        synapse: sn72.ImageSynapse = ctx.extra["synapse"]
        self._fill(synapse, 200, "Success", ctx.t0)
        synapse.testnet_label = ctx.extra.get("testnet_label")
        return reply(*sn72.success_response(synapse, pred.prob))

    def refuse(self, ctx: RequestContext, err: RequestRefused) -> web.Response:
        syn = ctx.extra.get("synapse") or sn72.ImageSynapse()
        with contextlib.suppress(Exception):
            self._fill(syn, err.status, err.message, ctx.t0)
        status, headers, out = sn72.error_response(syn, err.status, err.message)
        logger.debug("ImageSynapse {} from {}: {}", status, ctx.caller, headers.get(sn72.HEADER_AXON_STATUS_MESSAGE))
        return reply(status, headers, out)


async def unknown_synapse(request: web.Request) -> web.Response:
    """Any other ``POST /{name}``: the 404 bittensor's axon gives for a synapse it does not serve."""
    name = request.match_info.get("name", "")
    msg = f"Synapse name '{name}' not found. Available synapses ['{sn72.SYNAPSE_NAME}']"
    status, headers, out = sn72.error_response(None, 404, msg)
    REQUESTS.labels(route="unknown", status="404", caller="anonymous").inc()
    return reply(status, headers, out)
