"""The simulator: the validator's own forward/scoring path (``ValidatorCore``) pointed at one miner URL.

NATIX-parity challenges (50/50 labels; image folders or drawn scenes; level U{0..3}; JPEG q75 224),
signed like a real validator (SN72 by default, or btauth/1), reward and EMA as the validator computes
them, a progress bar, a summary table and a JSON report.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from loguru import logger

from roadminer.core.scoring import is_valid_prediction, to_label
from roadminer.protocol.keys import HotkeySigner
from roadminer.validator.challenges import Challenge, ChallengeSource, build_source
from roadminer.validator.client import MinerClient, MinerTarget, QueryResult
from roadminer.validator.neuron import ValidatorCore
from roadminer.validator.reward import ScoreBook

STATE_URL_SCHEMES = ("redis", "rediss", "unix")


class OutcomeRecorder:
    """Writes the simulator's labelled outcomes into the miner's own state (the Redis it runs on), so
    the miner's history and dashboard show MCC, accuracy and reward per validator as the validator
    scores them. Every challenge image gets its label (``HardExampleQueue.set_label``: a hard example
    the miner queued becomes a labelled one), and a wrong answer is queued as a ``known_error``."""

    def __init__(self, state: Any, validator: str) -> None:
        self.state = state  # roadminer.state.layer.StateLayer
        self.validator = validator
        self.recorded = 0
        self.queued = 0
        self.errors = 0

    @classmethod
    def from_url(cls, state_url: str, validator: str, state_config: Any = None) -> OutcomeRecorder:
        from roadminer.core.config import StateConfig
        from roadminer.state.layer import StateLayer

        scheme = urlparse(state_url).scheme
        if scheme not in STATE_URL_SCHEMES:
            raise ValueError(f"--state-url must be a redis:// URL (the miner's state.redis_url), got {state_url!r}")
        base = state_config if state_config is not None else StateConfig()
        cfg = base.model_copy(update={"backend": "redis", "redis_url": state_url})
        return cls(StateLayer.from_config(cfg), validator)

    async def record(self, challenge: Challenge, result: QueryResult) -> None:
        """Never raises: a state hiccup must not stop the simulation."""
        try:
            await self.state.rewards.record_outcome(self.validator, result.prediction, challenge.label)
            digest = hashlib.sha256(challenge.jpeg).hexdigest()
            pred = result.prediction
            if pred is not None and is_valid_prediction(pred) and int(to_label(pred)) != challenge.label:
                entry = await self.state.queue.enqueue(
                    challenge.jpeg,
                    ["known_error"],
                    float(pred),
                    "simulator",
                    None,
                    challenge.label,
                    self.validator,
                    digest,
                )
                self.queued += int(entry is not None)
            else:
                await self.state.queue.set_label(digest, challenge.label)
            self.recorded += 1
        except Exception as e:
            self.errors += 1
            logger.warning("recording the outcome into the miner's state failed: {!r}", e)

    async def close(self) -> None:
        await self.state.close()


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
    state_url: str | None = None,
    state_config: Any = None,
) -> dict[str, Any]:
    """Send ``n`` challenges to ``miner_url`` and return the summary (also written to ``out``).
    With ``state_url`` (the miner's Redis), each labelled outcome is also recorded into the miner's
    state (:class:`OutcomeRecorder`; ``state_config`` gives the key prefix and queue limits)."""
    ip, port = parse_miner_url(miner_url)
    signer = signer or HotkeySigner.from_uri(hotkey_uri)
    src = source or build_source(images, parquet)
    rng = np.random.default_rng(seed)
    recorder = (
        OutcomeRecorder.from_url(state_url, signer.ss58_address, state_config) if state_url else None
    )
    t_start = time.perf_counter()
    try:
        summary = await _simulate(
            miner_url, ip, port, n, seed, src, protocol, reference_flip_bug, timeout_s, concurrency,
            signer, miner_hotkey, rng, progress, recorder, t_start,
        )
    finally:
        if recorder is not None:
            await recorder.close()
    if recorder is not None:
        summary["state"] = {
            "url": _redact(state_url or ""),
            "recorded": recorder.recorded,
            "queued_known_errors": recorder.queued,
            "errors": recorder.errors,
        }
    if out:
        p = Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(summary, indent=2))
    return summary


def _redact(url: str) -> str:
    u = urlparse(url)
    if u.password:
        return url.replace(f":{u.password}@", ":***@")
    return url


async def _simulate(
    miner_url: str,
    ip: str,
    port: int,
    n: int,
    seed: int,
    src: ChallengeSource,
    protocol: str,
    reference_flip_bug: bool,
    timeout_s: float,
    concurrency: int,
    signer: HotkeySigner,
    miner_hotkey: str | None,
    rng: np.random.Generator,
    progress: bool,
    recorder: OutcomeRecorder | None,
    t_start: float,
) -> dict[str, Any]:
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
        await _drive(core, target, n, max(1, concurrency), progress, recorder)
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
    return summary


async def _drive(
    core: ValidatorCore,
    target: MinerTarget,
    n: int,
    concurrency: int,
    progress: bool,
    recorder: OutcomeRecorder | None = None,
) -> None:
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
                _, results, _ = await core.forward([target], challenge=ch)
                if recorder is not None:
                    for r in results:
                        await recorder.record(ch, r)
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
