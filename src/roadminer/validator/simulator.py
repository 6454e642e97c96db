"""The simulator: the validator's own forward/scoring path (``ValidatorCore``) pointed at one miner URL.

NATIX-parity challenges (50/50 labels; image folders or drawn scenes; level U{0..3}; JPEG q75 224),
signed like a real validator (SN72 by default, or btauth/1), reward and EMA as the validator computes
them, a progress bar, a summary table and a JSON report.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from loguru import logger

from roadminer.protocol.keys import HotkeySigner
from roadminer.validator.challenges import ChallengeSource, build_source
from roadminer.validator.client import MinerClient, MinerTarget
from roadminer.validator.neuron import ValidatorCore
from roadminer.validator.reward import ScoreBook


def parse_miner_url(url: str) -> tuple[str, int]:
    u = urlparse(url if "://" in url else f"http://{url}")
    if not u.hostname or not u.port:
        raise ValueError(f"miner URL needs a host and a port, got {url!r}")
    return u.hostname, int(u.port)


async def simulate(
    miner_url: str,
    *,
    n: int = 100,
    seed: int = 0,
    images: str | Path | None = None,
    parquet: str | Path | None = None,
    source: ChallengeSource | None = None,
    protocol: str = "sn72",
    reference_flip_bug: bool = False,
    timeout_s: float = 9.0,
    concurrency: int = 1,
    hotkey_uri: str = "//Alice",
    signer: HotkeySigner | None = None,
    miner_hotkey: str | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Send ``n`` challenges to ``miner_url`` and return the summary (also written to ``out``)."""
    ip, port = parse_miner_url(miner_url)
    signer = signer or HotkeySigner.from_uri(hotkey_uri)
    src = source or build_source(images, parquet)
    rng = np.random.default_rng(seed)
    t_start = time.perf_counter()
    async with MinerClient(signer, timeout_s=timeout_s) as client:
        health: dict[str, Any] = {}
        try:
            health = await client.fetch_health(miner_url)
        except Exception as e:
            if miner_hotkey is None:
                raise RuntimeError(
                    f"cannot read {miner_url}/health ({e}); pass the miner hotkey explicitly"
                ) from e
            logger.warning("miner health unavailable ({}); using the given hotkey", e)
        hotkey = miner_hotkey or str(health.get("hotkey"))
        uid = health.get("uid") if isinstance(health.get("uid"), int) else 0
        # The validator's metagraph view, reduced to the miner under test.
        book = ScoreBook()
        hotkeys = [f"unused-{i}" for i in range(uid)] + [hotkey]
        book.sync_hotkeys(hotkeys)
        target = MinerTarget(uid=uid, hotkey=hotkey, ip=ip, port=port, protocol=protocol)  # type: ignore[arg-type]
        core = ValidatorCore(
            client, src, book, rng, reference_flip_bug=reference_flip_bug, timeout_s=timeout_s
        )
        await _drive(core, target, n, max(1, concurrency), progress)
        summary = core.stats.summary(uid)
        summary.update(
            {
                "reward": round(core.miner_reward(uid), 4),
                "ema": round(float(book.scores[uid]), 6),
                "miner": {
                    "url": miner_url,
                    "hotkey": hotkey,
                    "uid": uid,
                    "version": health.get("version"),
                    "model_version": health.get("model_version"),
                    "tiers": health.get("tiers"),
                },
                "validator_hotkey": signer.ss58_address,
                "protocol": protocol,
                "seed": seed,
                "source": getattr(src, "name", type(src).__name__),
                "reference_flip_bug": reference_flip_bug,
                "elapsed_s": round(time.perf_counter() - t_start, 2),
            }
        )
    if out:
        p = Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(summary, indent=2))
    return summary


async def _drive(core: ValidatorCore, target: MinerTarget, n: int, concurrency: int, progress: bool) -> None:
    """Challenges are made in order (deterministic under the seed); up to ``concurrency`` are in flight."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)
    tasks: list[asyncio.Task[Any]] = []
    with Progress(
        TextColumn("[bold]simulate"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        disable=not progress,
        transient=False,
    ) as bar:
        task_id = bar.add_task("challenges", total=n, status="")

        async def one(ch: Any) -> None:
            try:
                await core.forward([target], challenge=ch)
            finally:
                sem.release()
                s = core.stats.records
                done_ok = sum(r.prediction is not None for r in s)
                bar.update(task_id, advance=1, status=f"answered {done_ok}/{len(s)}")

        for _ in range(n):
            await sem.acquire()
            ch = await loop.run_in_executor(None, core.new_challenge)
            tasks.append(asyncio.create_task(one(ch)))
        await asyncio.gather(*tasks)


def print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"roadminer simulate -> {summary['miner']['url']}", show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    lat = summary["latency_ms"]
    rows = [
        ("challenges", str(summary["n"])),
        ("answered", str(summary["answered"])),
        ("MCC", f"{summary['mcc']:.4f}"),
        ("accuracy", f"{summary['accuracy']:.4f}"),
        ("reward (0.5·MCC100+0.5·Acc10)^3", f"{summary['reward']:.4f}"),
        ("mean reward", f"{summary['mean_reward']:.4f}"),
        ("score EMA", f"{summary['ema']:.6f}"),
        ("latency p50 / p99 (ms)", f"{lat['p50']} / {lat['p99']}"),
        ("errors", ", ".join(f"{k}: {v}" for k, v in summary["errors"].items()) or "none"),
    ]
    for lvl, m in summary["per_level"].items():
        acc = "-" if m["accuracy"] is None else f"{m['accuracy']:.3f}"
        rows.append((f"level {lvl} accuracy (n={m['n']})", acc))
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    console.print(
        f"miner {summary['miner']['hotkey']} (uid {summary['miner']['uid']}, model "
        f"{summary['miner'].get('model_version')}); protocol {summary['protocol']}; source "
        f"{summary['source']}; {summary['elapsed_s']} s"
    )
