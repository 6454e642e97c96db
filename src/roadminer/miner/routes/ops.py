"""Operations routes of one hotkey's app: ``GET /health`` (model, chain, state, batcher) and
``GET /metrics`` (Prometheus text)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from roadminer import __spec_version__, __version__
from roadminer.core.metrics import render
from roadminer.miner.backend import MinerBackend
from roadminer.protocol import sn72


def health_info(backend: MinerBackend, hotkey: str, port: int | None) -> dict[str, Any]:
    info = backend.model_info()
    me = backend.chain.self_info(hotkey)
    return {
        "status": "ok",
        "hotkey": hotkey,
        "uid": me.uid if me else None,
        "registered": me is not None,
        "version": __version__,
        "spec_version": __spec_version__,
        "port": port,
        "tiers": info["tiers"],
        "model_version": info["model_version"],
        "uptime_s": round(time.time() - backend.started_at, 3),
        "batcher": {
            "depth": backend.batcher.depth,
            "batches": backend.batcher.batches,
            "items": backend.batcher.items,
        },
        "inflight": backend.guards.shedder.inflight,
        "chain": backend.chain.describe(),
        "nonce_store": backend.nonces.describe(),
        "state": backend.state_info(),
        "routes": [sn72.ROUTE, backend.settings.server.btauth_route],
    }


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
