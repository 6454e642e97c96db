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
        **axon_info(backend, hotkey),
        "worker": worker_info(backend),
    }


def axon_info(backend: MinerBackend, hotkey: str) -> dict[str, Any]:
    """``announced`` and the axon address of ``hotkey`` (what ServeAxon published, or why not)."""
    ann = backend.announcer
    status = ann.status(hotkey) if ann is not None else None
    if status is None:
        if backend.worker is not None and backend.worker[0] != 0:
            why = "announced by worker 0"
        elif backend.chain.network == "local":
            why = "local chain: nothing to announce"
        else:
            why = "announcing is off (chain.announce)"
        return {"announced": False, "axon": {"announced": False, "reason": why}}
    return {"announced": status.announced, "axon": status.to_dict()}


def worker_info(backend: MinerBackend) -> dict[str, Any]:
    import os

    index, count = backend.worker if backend.worker is not None else (0, 1)
    return {"index": index, "count": count, "pid": os.getpid()}


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
