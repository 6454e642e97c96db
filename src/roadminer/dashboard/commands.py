"""``roadminer dashboard``: the reward/MCC dashboard as its own web server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def dashboard(
        config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config")] = None,
        host: Annotated[str | None, typer.Option(help="bind address (default dashboard.host)")] = None,
        port: Annotated[int | None, typer.Option(help="port (default dashboard.port)")] = None,
        redis_url: Annotated[str | None, typer.Option(help="read state from this Redis")] = None,
        replay: Annotated[
            str | None, typer.Option(help="first replay challenges from this image folder ('scenes': drawn)")
        ] = None,
        replay_n: Annotated[int, typer.Option(help="challenges to replay")] = 300,
        replay_hours: Annotated[
            float, typer.Option(help="spread replayed challenges over the last N hours")
        ] = 6.0,
        replay_only: Annotated[bool, typer.Option(help="replay, then exit without serving")] = False,
        force: Annotated[
            bool, typer.Option("--force", help="replay even into a store that holds real history")
        ] = False,
    ) -> None:
        """Serve the reward/MCC dashboard (SVG charts + JSON API) over the configured state backend."""
        import asyncio
        import contextlib

        from aiohttp import web
        from loguru import logger

        from roadminer.core.config import load_settings
        from roadminer.dashboard.app import build_dashboard_app
        from roadminer.state.layer import StateLayer

        overrides = {"dashboard.host": host, "dashboard.port": port}
        if redis_url:
            overrides |= {"state.backend": "redis", "state.redis_url": redis_url}
        try:
            settings = load_settings(config, overrides)
        except (OSError, ValueError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from e

        async def main() -> None:
            state = StateLayer.from_config(settings.state)
            if replay:
                from roadminer.dashboard.replay import ReplayRefused, replay_history

                try:
                    report = await replay_history(
                        state,
                        settings,
                        None if replay == "scenes" else replay,
                        n=replay_n,
                        span_s=replay_hours * 3600.0,
                        force=force,
                    )
                except ReplayRefused as e:
                    await state.close()
                    typer.echo(f"error: {e}", err=True)
                    raise typer.Exit(2) from e
                logger.info("replayed {}", report)
            if replay_only:
                await state.close()
                return
            app = build_dashboard_app(state, settings, own_state=True, standalone=True)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, settings.dashboard.host, settings.dashboard.port)
            await site.start()
            logger.info("dashboard on http://{}:{}/", settings.dashboard.host, settings.dashboard.port)
            try:
                await asyncio.Event().wait()
            finally:
                await runner.cleanup()

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())
