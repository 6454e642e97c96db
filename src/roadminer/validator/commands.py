"""``roadminer simulate`` and ``roadminer validator``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from loguru import logger

from roadminer.core.cli_args import parse_sets


async def run_validator(settings: Any, steps: int | None = None) -> None:
    """The validator neuron until SIGINT/SIGTERM (or ``steps`` challenges)."""
    from roadminer.chain.base import build_chain
    from roadminer.protocol.keys import HotkeySigner, load_signer
    from roadminer.validator.challenges import build_source
    from roadminer.validator.client import MinerClient
    from roadminer.validator.neuron import FileWeightSetter, Validator, build_state_store

    v = settings.validator
    w = settings.wallet
    signer = (
        HotkeySigner.from_uri(v.hotkey_uri)
        if v.hotkey_uri
        else load_signer(w.path, w.name, w.hotkey, w.create_if_missing)
    )
    chain = build_chain(settings)
    await chain.start()
    setter = (
        chain
        if hasattr(chain, "set_weights")
        else FileWeightSetter(Path(v.state_path).expanduser().with_name("weights.json"))
    )
    source = build_source(v.images, v.parquet)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with MinerClient(signer, timeout_s=v.timeout_s) as client:
            validator = Validator(settings, chain, client, source, build_state_store(settings), setter)
            logger.info(
                "validator {} on {} (netuid {}), source {}",
                signer.ss58_address,
                chain.network,
                settings.chain.netuid,
                getattr(source, "name", "?"),
            )
            await validator.run(steps=steps, stop=stop)
            validator.save_state()
    finally:
        await chain.stop()


def register(app: typer.Typer) -> None:
    @app.command()
    def simulate(
        miner: Annotated[str, typer.Option("--miner", help="miner base URL, e.g. http://127.0.0.1:8091")],
        images: Annotated[
            Path | None,
            typer.Option("--images", help="DIR with roadwork/ and no_roadwork/ (default: drawn scenes)"),
        ] = None,
        n: Annotated[int | None, typer.Option("--n", help="number of challenges")] = None,
        seed: Annotated[int | None, typer.Option("--seed")] = None,
        out: Annotated[Path | None, typer.Option("--out", help="write the JSON summary here")] = None,
        protocol: Annotated[str | None, typer.Option("--protocol", help="sn72 | btauth")] = None,
        reference_flip_bug: Annotated[
            bool | None,
            typer.Option(
                "--reference-flip-bug/--real-flips", help="reproduce the reference's never-firing flips"
            ),
        ] = None,
        concurrency: Annotated[int | None, typer.Option("--concurrency", help="challenges in flight")] = None,
        hotkey_uri: Annotated[
            str | None, typer.Option("--hotkey-uri", help="validator dev key (default //Alice)")
        ] = None,
        parquet: Annotated[
            Path | None, typer.Option("--parquet", help="reference parquet layout source")
        ] = None,
        state_url: Annotated[
            str | None,
            typer.Option(
                "--state-url",
                help="the miner's Redis (redis://...): record labelled outcomes into its reward/MCC "
                "history and label its hard examples (key prefix: state.key_prefix)",
            ),
        ] = None,
        config: Annotated[Path | None, typer.Option("--config", "-c")] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", help="dotted override")] = None,
    ) -> None:
        """NATIX-parity challenges against a running miner: mcc, accuracy, reward, latency."""
        from roadminer.core.config import load_settings
        from roadminer.validator.simulator import print_summary
        from roadminer.validator.simulator import simulate as run_sim

        overrides = {
            "simulator.n": n,
            "simulator.seed": seed,
            "simulator.protocol": protocol,
            "simulator.reference_flip_bug": reference_flip_bug,
            "simulator.concurrency": concurrency,
            "simulator.hotkey_uri": hotkey_uri,
        }
        overrides.update(parse_sets(set_))
        settings = load_settings(config, overrides)
        s = settings.simulator
        if s.protocol not in ("sn72", "btauth"):
            raise typer.BadParameter("--protocol must be sn72 or btauth")
        try:
            summary = asyncio.run(
                run_sim(
                    miner,
                    n=s.n,
                    seed=s.seed,
                    images=images,
                    parquet=parquet,
                    protocol=s.protocol,
                    reference_flip_bug=s.reference_flip_bug,
                    timeout_s=s.timeout_s,
                    concurrency=s.concurrency,
                    hotkey_uri=s.hotkey_uri,
                    out=out,
                    state_url=state_url,
                    state_config=settings.state,
                )
            )
        except (RuntimeError, ValueError, OSError) as e:
            typer.echo(f"simulate: {e}", err=True)
            raise typer.Exit(2) from None
        print_summary(summary)
        if "state" in summary:
            st = summary["state"]
            typer.echo(
                f"recorded {st['recorded']} outcomes into {st['url']} "
                f"({st['queued_known_errors']} known errors queued, {st['errors']} failed)"
            )
        if out:
            typer.echo(f"wrote {out}")

    @app.command()
    def validator(
        config: Annotated[
            Path | None, typer.Option("--config", "-c", help="YAML (e.g. configs/validator.yaml)")
        ] = None,
        chain: Annotated[str | None, typer.Option("--chain", help="local | finney | test")] = None,
        netuid: Annotated[int | None, typer.Option("--netuid")] = None,
        images: Annotated[str | None, typer.Option("--images")] = None,
        parquet: Annotated[str | None, typer.Option("--parquet")] = None,
        wallet_path: Annotated[str | None, typer.Option("--wallet.path", "--wallet-path")] = None,
        wallet_name: Annotated[str | None, typer.Option("--wallet.name", "--wallet-name")] = None,
        wallet_hotkey: Annotated[str | None, typer.Option("--wallet.hotkey", "--wallet-hotkey")] = None,
        steps: Annotated[int | None, typer.Option("--steps", help="stop after N challenges")] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", help="dotted override")] = None,
    ) -> None:
        """Validator neuron: challenges, reward/EMA, persisted scores, weights."""
        from roadminer.core.config import load_settings

        overrides = {
            "chain.network": chain,
            "chain.netuid": netuid,
            "validator.images": images,
            "validator.parquet": parquet,
            "wallet.path": wallet_path,
            "wallet.name": wallet_name,
            "wallet.hotkey": wallet_hotkey,
        }
        overrides.update(parse_sets(set_))
        if config is None and Path("configs/validator.yaml").is_file():
            config = Path("configs/validator.yaml")
        settings = load_settings(config, overrides)
        asyncio.run(run_validator(settings, steps))
