"""Running a miner in-process: ``start_miner`` wires settings, state layer, model (and hot reload from
the registry), chain view, chain metrics and one aiohttp app per served hotkey over one shared backend;
``RunningMiner.stop`` takes it all down again. The one place where the packages meet at run time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from loguru import logger

from roadminer import __spec_version__, __version__
from roadminer.chain.base import ChainView
from roadminer.core.config import Settings
from roadminer.miner.app import ROUTES_KEY, build_app
from roadminer.miner.backend import MinerBackend, btauth_nonce_ttl
from roadminer.miner.batcher import MicroBatcher, predictor_version
from roadminer.miner.chain_metrics import ChainMetricsRecorder
from roadminer.protocol import sn72
from roadminer.protocol.keys import HotkeySigner
from roadminer.state.layer import StateLayer
from roadminer.state.model_events import note_model_event
from roadminer.state.nonce import NonceStore


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
    announcer: Any = None  # roadminer.chain.announce.AxonAnnouncer on finney/test

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

    router = EarlyExitRouter.from_settings(settings)  # settings.device reaches every tier
    router.warmup()
    return router


def check_announce_config(settings: Settings) -> None:
    """Refuse (``AnnounceConfigError``) an address that could not be announced on a bittensor chain."""
    if settings.chain.network == "local" or not settings.chain.announce:
        return
    from roadminer.chain.announce import announce_address

    srv = settings.server
    announce_address(srv.host, srv.port or 1, srv.external_ip, srv.external_port)


async def start_miner(
    settings: Settings,
    *,
    predictor: Any = None,
    chain: ChainView | None = None,
    signers: list[tuple[int, HotkeySigner]] | None = None,
    nonces: NonceStore | None = None,
    state: StateLayer | None = None,
    reuse_port: bool = False,
    worker_index: int | None = None,
) -> RunningMiner:
    """Start the miner's apps (one per hotkey/port; port 0 picks a free one) over one shared backend.

    Injected ``predictor``/``chain``/``signers``/``nonces``/``state`` replace what the settings would
    build (injected ones are not closed by ``stop``). Without an injected predictor the GPU memory plan is
    checked first (``PlanError`` on an over-committed GPU), again with what the loaded tiers hold, and the
    model registry is followed live.

    ``reuse_port``/``worker_index``: this process is worker ``worker_index`` of ``server.workers`` sharing
    the ports (SO_REUSEPORT, ``roadminer.miner.workers``); only worker 0 (or a lone miner) announces the
    axon and records chain metrics. On finney/test every served hotkey's axon is announced
    (``roadminer.chain.announce``); an address that cannot be announced refuses the start
    (``AnnounceConfigError``) before any model loads.
    """
    from roadminer.chain.base import build_chain
    from roadminer.core.metrics import MODEL_INFO

    owned: list[Callable[[], Awaitable[None]]] = []
    runners: list[web.AppRunner] = []
    try:
        follow_registry = predictor is None
        lead = worker_index is None or worker_index == 0
        check_announce_config(settings)
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
            try:
                check_plan(settings, predictor)  # what the loaded tiers really hold
            except BaseException:
                predictor.close()
                raise
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
            nonces = NonceStore(
                state.store,
                btauth_ttl_s=btauth_nonce_ttl(settings),
                endpoint_ttl_s=settings.guards.nonce_endpoint_ttl_s,
            )
        backend = MinerBackend.build(settings, batcher, chain, nonces=nonces, state=state)
        owned.append(backend.close)
        info = backend.model_info()
        MODEL_INFO.info({"version": str(info["model_version"]), "roadminer": __version__})
        recorder = ChainMetricsRecorder(chain, state, signers[0][1].ss58_address,
                                        settings.chain.metrics_interval_s if lead else 0.0)
        recorder.start()
        owned.append(recorder.stop)
        from roadminer.chain.forensics import ForensicsRecorder  # per-epoch ratings and alerts

        forensics = ForensicsRecorder(chain, state.store, signers[0][1].ss58_address, settings.chain.metrics_interval_s)
        forensics.start()
        owned.append(forensics.stop)
        host = settings.server.host
        urls, ports = [], []
        for i, (port, signer) in enumerate(signers):
            app = build_app(
                settings, backend, signer=signer, port=port, dashboard=i == 0 and settings.dashboard.on_miner
            )
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None)
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
        announcer = None
        if lead:
            from roadminer.chain.announce import build_announcer

            announcer = build_announcer(chain, settings, [(s, p) for (_, s), p in zip(signers, ports, strict=True)],
                                        version=__spec_version__)
            if announcer is not None:
                await announcer.start()
                owned.append(announcer.stop)
        backend.announcer = announcer
        backend.worker = (worker_index, int(settings.server.workers)) if worker_index is not None else None
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
            announcer=announcer,
        )
    except BaseException:
        for r in runners:
            with contextlib.suppress(Exception):
                await r.cleanup()
        for close in reversed(owned):
            with contextlib.suppress(Exception):
                await close()
        raise
