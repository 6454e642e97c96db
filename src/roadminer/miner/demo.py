"""``roadminer demo``: a miner and the simulator in one process, on loopback, with no data needed.

Starts the miner with the default model on a free port, on a throwaway local chain where the demo
validator (``//Alice``) holds a validator permit and the miner's hotkey is registered; runs the
simulator against it (drawn scenes unless ``--images``), prints the summary and stops cleanly.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from loguru import logger

DEMO_VALIDATOR_URI = "//Alice"
DEFAULT_WALLET_DIR = Path("~/.cache/roadminer/demo-wallets")


async def run_demo(
    n: int = 100,
    images: Path | None = None,
    seed: int = 0,
    protocol: str = "sn72",
    config: Path | None = None,
    out: Path | None = None,
    wallet_dir: Path = DEFAULT_WALLET_DIR,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from roadminer.chain.local import LocalChainView
    from roadminer.core.config import load_settings
    from roadminer.miner.run import load_signers, start_miner
    from roadminer.protocol.keys import ss58_from_uri
    from roadminer.validator.simulator import simulate

    if config is None and Path("configs/miner.yaml").is_file():
        config = Path("configs/miner.yaml")
    with tempfile.TemporaryDirectory(prefix="roadminer-demo-") as tmp:
        chain_file = Path(tmp) / "local_chain.yaml"
        base = {
            "server.host": "127.0.0.1",
            "server.port": 0,
            "server.extra_hotkeys": [],
            "chain.network": "local",
            "chain.local_config": str(chain_file),
            "wallet.path": str(wallet_dir.expanduser()),
            "wallet.name": "demo",
            "wallet.hotkey": "miner",
            "wallet.create_if_missing": True,
            "state.backend": "memory",
            # The simulator sends back to back; real validators send about once a minute.
            "guards.rate_limit_per_minute": 1_000_000,
            "guards.rate_limit_burst": 100_000,
        }
        base.update(overrides or {})
        settings = load_settings(config, base)
        signers = load_signers(settings)  # creates the demo hotkey on first run
        miner_hotkey = signers[0][1].ss58_address
        LocalChainView.write(
            chain_file,
            [
                {
                    "uid": 0,
                    "hotkey": ss58_from_uri(DEMO_VALIDATOR_URI),
                    "stake": 25000.0,
                    "validator_permit": True,
                },
                {"uid": 1, "hotkey": miner_hotkey, "stake": 0.0, "validator_permit": False},
            ],
            netuid=settings.chain.netuid,
        )
        logger.info("demo: starting miner {} (model from {})", miner_hotkey, config or "defaults")
        miner = await start_miner(settings, signers=signers)
        try:
            return await simulate(
                miner.url,
                n=n,
                seed=seed,
                images=images,
                protocol=protocol,
                hotkey_uri=DEMO_VALIDATOR_URI,
                out=out,
                progress=progress,
                timeout_s=settings.simulator.timeout_s,
            )
        finally:
            await miner.stop()


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        n: Annotated[int, typer.Option("--n", help="number of challenges")] = 100,
        images: Annotated[
            Path | None,
            typer.Option("--images", help="DIR with roadwork/ + no_roadwork/ (default: drawn scenes)"),
        ] = None,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        protocol: Annotated[str, typer.Option("--protocol", help="sn72 | btauth")] = "sn72",
        config: Annotated[
            Path | None,
            typer.Option("--config", "-c", help="miner YAML (default: configs/miner.yaml when present)"),
        ] = None,
        out: Annotated[Path | None, typer.Option("--out", help="write the JSON summary here")] = None,
    ) -> None:
        """Start a miner on loopback, run the simulator against it, print the summary, stop."""
        from roadminer.validator.simulator import print_summary

        if protocol not in ("sn72", "btauth"):
            raise typer.BadParameter("--protocol must be sn72 or btauth")
        summary = asyncio.run(
            run_demo(n=n, images=images, seed=seed, protocol=protocol, config=config, out=out)
        )
        print_summary(summary)
        if out:
            typer.echo(f"wrote {out}")
