"""``roadminer miner``: serve SN72 ImageSynapse + btauth/1 for one or more hotkeys."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from loguru import logger

DEFAULT_CONFIG = Path("configs/miner.yaml")


def miner_overrides(port: int | None, host: str | None, chain: str | None, allow_unregistered: bool | None,
                    wallet_path: str | None, wallet_name: str | None, wallet_hotkey: str | None,
                    netuid: int | None) -> dict[str, Any]:
    return {
        "server.port": port,
        "server.host": host,
        "chain.network": chain,
        "chain.netuid": netuid,
        "guards.allow_unregistered": allow_unregistered,
        "wallet.path": wallet_path,
        "wallet.name": wallet_name,
        "wallet.hotkey": wallet_hotkey,
    }


async def serve(settings: Any) -> None:
    """Run the miner (``server.workers`` processes when more than one) until SIGINT/SIGTERM."""
    if settings.server.workers > 1:
        from roadminer.miner.workers import WorkerPool

        miner: Any = WorkerPool(settings)
        await miner.start()
    else:
        from roadminer.miner.run import start_miner

        miner = await start_miner(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    for url, hk in zip(miner.urls, miner.hotkeys, strict=True):
        typer.echo(f"serving {hk} at {url}  (health: {url}/health)")
    try:
        await stop.wait()
    finally:
        logger.info("miner stopping")
        await miner.stop()


def register(app: typer.Typer) -> None:
    @app.command()
    def miner(
        config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (default: "
                                                    "configs/miner.yaml when present)")] = None,
        port: Annotated[int | None, typer.Option("--port", help="port of the main hotkey")] = None,
        host: Annotated[str | None, typer.Option("--host", help="bind address")] = None,
        chain: Annotated[str | None, typer.Option("--chain", help="local | finney | test")] = None,
        netuid: Annotated[int | None, typer.Option("--netuid")] = None,
        allow_unregistered: Annotated[bool | None, typer.Option(
            "--allow-unregistered/--registered-only", help="serve callers missing from the chain")] = None,
        wallet_path: Annotated[str | None, typer.Option("--wallet.path", "--wallet-path")] = None,
        wallet_name: Annotated[str | None, typer.Option("--wallet.name", "--wallet-name")] = None,
        wallet_hotkey: Annotated[str | None, typer.Option("--wallet.hotkey", "--wallet-hotkey")] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", help="dotted override, e.g. "
                                                       "--set batcher.max_batch=32")] = None,
    ) -> None:
        """Serve POST /ImageSynapse (SN72), POST /v1/roadwork (btauth/1), GET /health and GET /metrics."""
        from roadminer.core.cli_args import parse_sets
        from roadminer.core.config import load_settings
        from roadminer.core.logging_setup import setup_logging

        overrides = miner_overrides(port, host, chain, allow_unregistered, wallet_path, wallet_name,
                                    wallet_hotkey, netuid)
        overrides.update(parse_sets(set_))
        cfg_file = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
        settings = load_settings(cfg_file, overrides)
        if settings.logging.file or settings.logging.json_logs:
            setup_logging(settings.logging.level, settings.logging.file, settings.logging.json_logs)
        from roadminer.chain.announce import AnnounceConfigError
        from roadminer.deploy.planner import PlanError
        from roadminer.miner.workers import WorkersConfigError
        from roadminer.models.placement import PlacementError

        try:
            asyncio.run(serve(settings))
        except (PlanError, AnnounceConfigError, PlacementError, WorkersConfigError) as e:
            # an over-committed GPU, an address that cannot be announced, a device that is not there,
            # workers without a shared state: say why, start nothing
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
