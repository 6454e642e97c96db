"""The validator: one forward/scoring path (``ValidatorCore``) and the chain-driven neuron loop.

``ValidatorCore.forward`` makes one challenge, queries the given miners concurrently, scores the
answers (reward + EMA) and records statistics. The neuron (``Validator``) feeds it miners from the chain
(shuffled deck), persists the scores (disk JSON or Redis) and sets weights; the simulator feeds it one
miner URL. Both share this code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from loguru import logger

from roadminer.core.scoring import mcc, reward_from_history, to_label
from roadminer.validator.challenges import Challenge, ChallengeSource, ShuffledDeck, make_challenge
from roadminer.validator.client import MinerClient, MinerTarget, QueryResult
from roadminer.validator.reward import ScoreBook
from roadminer.validator.weights import WeightVector, process_weights

# --------------------------------------------------------------------------------------------------
# Statistics of a run
# --------------------------------------------------------------------------------------------------


@dataclass
class AnswerRecord:
    uid: int
    hotkey: str
    label: int
    level: int
    prediction: float | None
    reward: float
    latency_s: float
    error: str | None
    status: int


@dataclass
class RunStats:
    records: list[AnswerRecord] = field(default_factory=list)

    def add(self, challenge: Challenge, results: list[QueryResult], rewards: np.ndarray) -> None:
        for r, rew in zip(results, rewards, strict=True):
            self.records.append(
                AnswerRecord(
                    r.uid,
                    r.hotkey,
                    challenge.label,
                    challenge.level,
                    r.prediction,
                    float(rew),
                    r.latency_s,
                    r.error,
                    r.status,
                )
            )

    def summary(self, uid: int | None = None) -> dict[str, Any]:
        recs = [r for r in self.records if uid is None or r.uid == uid]
        ok = [r for r in recs if r.prediction is not None]
        labels = [r.label for r in ok]
        preds = [int(to_label(r.prediction)) for r in ok]  # type: ignore[arg-type]
        lat = np.asarray([r.latency_s for r in ok], dtype=np.float64) * 1000.0
        errors: dict[str, int] = {}
        for r in recs:
            if r.error:
                errors[r.error] = errors.get(r.error, 0) + 1
        per_level: dict[str, dict[str, Any]] = {}
        for lvl in sorted({r.level for r in recs}):
            lv = [r for r in recs if r.level == lvl]
            lv_ok = [r for r in lv if r.prediction is not None]
            correct = sum(int(to_label(r.prediction)) == r.label for r in lv_ok)  # type: ignore[arg-type]
            per_level[str(lvl)] = {
                "n": len(lv),
                "answered": len(lv_ok),
                "accuracy": round(correct / len(lv_ok), 4) if lv_ok else None,
                "mcc": round(
                    max(
                        0.0,
                        mcc([r.label for r in lv_ok], [int(to_label(r.prediction)) for r in lv_ok]),
                    ),
                    4,
                ),  # type: ignore[arg-type]
            }
        acc = float(np.mean(np.asarray(labels) == np.asarray(preds))) if ok else 0.0
        return {
            "n": len(recs),
            "answered": len(ok),
            "mcc": round(max(0.0, mcc(labels, preds)), 4),
            "accuracy": round(acc, 4),
            "mean_reward": round(float(np.mean([r.reward for r in recs])), 4) if recs else 0.0,
            "latency_ms": {
                "p50": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
                "p99": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
                "mean": round(float(lat.mean()), 2) if lat.size else None,
            },
            "errors": errors,
            "per_level": per_level,
            "labels": {"roadwork": sum(r.label for r in recs), "no_roadwork": sum(1 - r.label for r in recs)},
        }


# --------------------------------------------------------------------------------------------------
# The one forward/scoring path
# --------------------------------------------------------------------------------------------------


class ValidatorCore:
    def __init__(
        self,
        client: MinerClient,
        source: ChallengeSource,
        book: ScoreBook,
        rng: np.random.Generator,
        *,
        reference_flip_bug: bool = False,
        timeout_s: float = 9.0,
    ) -> None:
        self.client = client
        self.source = source
        self.book = book
        self.rng = rng
        self.reference_flip_bug = reference_flip_bug
        self.timeout_s = timeout_s
        self.stats = RunStats()
        self._score_lock = asyncio.Lock()

    def new_challenge(self) -> Challenge:
        return make_challenge(self.source, self.rng, reference_flip_bug=self.reference_flip_bug)

    async def forward(
        self,
        targets: list[MinerTarget],
        challenge: Challenge | None = None,
        validator_uids: list[int] | None = None,
    ) -> tuple[Challenge, list[QueryResult], np.ndarray]:
        """One challenge to ``targets``: query, reward, EMA, statistics."""
        if challenge is None:
            # Augmentation is CPU work: keep the event loop free for the concurrent queries.
            challenge = await asyncio.get_running_loop().run_in_executor(None, self.new_challenge)
        results = await self.client.query_many(targets, challenge.image_b64, self.timeout_s)
        async with self._score_lock:
            rewards = self.book.score_answers(
                [t.uid for t in targets],
                [r.prediction for r in results],
                challenge.label,
                validator_uids or [],
            )
            self.stats.add(challenge, results, rewards)
        return challenge, results, rewards

    def miner_reward(self, uid: int) -> float:
        rec = self.book.tracker.records.get(uid)
        return reward_from_history(rec.history) if rec else 0.0


# --------------------------------------------------------------------------------------------------
# State persistence
# --------------------------------------------------------------------------------------------------


class StateStore(Protocol):
    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...

    def describe(self) -> str: ...


class JsonFileStateStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            logger.warning("validator state {} unreadable ({}); starting fresh", self.path, e)
            return None
        return data if isinstance(data, dict) else None

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.path)

    def describe(self) -> str:
        return f"file:{self.path}"


class RedisStateStore:
    def __init__(self, url: str, key: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.key = key

    def load(self) -> dict[str, Any] | None:
        raw = self.client.get(self.key)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError as e:
            logger.warning("validator state in redis key {} unreadable ({}); starting fresh", self.key, e)
            return None
        return data if isinstance(data, dict) else None

    def save(self, state: dict[str, Any]) -> None:
        self.client.set(self.key, json.dumps(state))

    def describe(self) -> str:
        return f"redis:{self.key}"


def build_state_store(settings: Any) -> StateStore:
    v = settings.validator
    if v.state_backend == "redis":
        return RedisStateStore(settings.state.redis_url, settings.state.key_prefix + v.state_key)
    return JsonFileStateStore(v.state_path)


# --------------------------------------------------------------------------------------------------
# The chain-driven neuron
# --------------------------------------------------------------------------------------------------


class WeightSetter(Protocol):
    async def set_weights(self, uids: list[int], weights: list[int], version_key: int) -> bool: ...


class FileWeightSetter:
    """Local chains have no extrinsics: the weight vector is written next to the state for inspection."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    async def set_weights(self, uids: list[int], weights: list[int], version_key: int) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(
            json.dumps({"uids": uids, "weights": weights, "version_key": version_key, "time": time.time()})
        )
        return True


class Validator:
    """Challenge loop over the chain's miners, with persisted scores and periodic weights."""

    def __init__(
        self,
        settings: Any,
        chain: Any,
        client: MinerClient,
        source: ChallengeSource,
        store: StateStore,
        weight_setter: WeightSetter | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = settings.validator
        self.chain = chain
        self.client = client
        self.store = store
        self.weight_setter = weight_setter
        seed = self.cfg.seed if self.cfg.seed is not None else int.from_bytes(os.urandom(4), "little")
        self.rng = np.random.default_rng(seed)
        self.deck = ShuffledDeck(self.rng)
        state = store.load()
        book = ScoreBook(0, alpha=self.cfg.alpha)
        if state:
            try:
                book = ScoreBook.from_json(state.get("book", state))
                book.alpha = self.cfg.alpha
                logger.info("restored validator scores from {} (step {})", store.describe(), book.step)
            except (KeyError, ValueError, TypeError) as e:
                logger.warning("validator state invalid ({}); starting fresh", e)
        self.last_weights_block = int(state.get("last_weights_block", 0)) if state else 0
        self.last_weights_time = float(state.get("last_weights_time", 0.0)) if state else 0.0
        self.core = ValidatorCore(
            client,
            source,
            book,
            self.rng,
            reference_flip_bug=self.cfg.reference_flip_bug,
            timeout_s=self.cfg.timeout_s,
        )
        self.last_weights: WeightVector | None = None

    @property
    def book(self) -> ScoreBook:
        return self.core.book

    def sync_metagraph(self) -> None:
        neurons = sorted(self.chain.neurons(), key=lambda n: n.uid)
        n = (neurons[-1].uid + 1) if neurons else 0
        hotkeys = [""] * n
        for nrn in neurons:
            hotkeys[nrn.uid] = nrn.hotkey
        reset = self.book.sync_hotkeys(hotkeys)
        if reset:
            logger.info("hotkey changed at UIDs {}: scores reset", reset)

    def validator_uids(self) -> list[int]:
        return [
            n.uid
            for n in self.chain.neurons()
            if n.validator_permit and n.stake >= self.cfg.vpermit_stake_limit
        ]

    def miner_targets(self) -> dict[int, MinerTarget]:
        skip = set(self.validator_uids())
        me = self.client.hotkey
        out: dict[int, MinerTarget] = {}
        for n in self.chain.neurons():
            if n.uid in skip or n.hotkey == me or not n.ip or not n.port or n.ip == "0.0.0.0":
                continue
            out[n.uid] = MinerTarget(
                uid=n.uid, hotkey=n.hotkey, ip=n.ip, port=int(n.port), protocol=self.cfg.protocol
            )
        return out

    async def step(self) -> list[QueryResult]:
        """One challenge to ``sample_size`` miners dealt from the deck."""
        self.sync_metagraph()
        targets = self.miner_targets()
        uids = self.deck.deal(list(targets), self.cfg.sample_size)
        if not uids:
            logger.warning("no miners with a serving axon to query")
            return []
        challenge, results, rewards = await self.core.forward(
            [targets[u] for u in uids], validator_uids=self.validator_uids()
        )
        logger.info(
            "challenge label={} level={} -> {}",
            challenge.label,
            challenge.level,
            ", ".join(
                f"{r.uid}:{'-' if r.prediction is None else f'{r.prediction:.2f}'}->{w:.3f}"
                for r, w in zip(results, rewards, strict=True)
            ),
        )
        self.save_state()
        return results

    def save_state(self) -> None:
        try:
            self.store.save(
                {
                    "book": self.book.to_json(),
                    "last_weights_block": self.last_weights_block,
                    "last_weights_time": self.last_weights_time,
                    "saved_at": time.time(),
                }
            )
        except Exception as e:  # a storage outage must not stop scoring
            logger.warning("saving validator state to {} failed: {}", self.store.describe(), e)

    def compute_weights(self) -> WeightVector:
        from roadminer import __spec_version__

        return process_weights(
            self.book.scores,
            min_allowed_weights=self.cfg.min_allowed_weights,
            max_weight_limit=self.cfg.max_weight_limit,
            version_key=int(__spec_version__),
        )

    def weights_due(self) -> bool:
        block = int(getattr(self.chain, "block", 0) or 0)
        if block > 0:
            return block - self.last_weights_block > self.cfg.weights_interval_blocks
        return time.time() - self.last_weights_time >= self.cfg.weights_interval_s

    async def maybe_set_weights(self, force: bool = False) -> WeightVector | None:
        if not force and not self.weights_due():
            return None
        wv = self.compute_weights()
        self.last_weights = wv
        if self.weight_setter is not None and wv.uint16_uids:
            try:
                ok = await self.weight_setter.set_weights(wv.uint16_uids, wv.uint16, wv.version_key)
            except Exception as e:
                logger.warning("set_weights failed: {}", e)
                ok = False
            if ok:
                self.last_weights_block = int(getattr(self.chain, "block", 0) or 0)
                self.last_weights_time = time.time()
                self.save_state()
                logger.info("weights set: {}", dict(zip(wv.uint16_uids, wv.uint16, strict=True)))
        return wv

    async def run(self, steps: int | None = None, stop: asyncio.Event | None = None) -> None:
        """The neuron loop: one challenge every ``challenge_interval_s``; weights when due."""
        done = 0
        stop = stop or asyncio.Event()
        while not stop.is_set() and (steps is None or done < steps):
            t0 = time.monotonic()
            try:
                await self.step()
                await self.maybe_set_weights()
            except Exception as e:  # keep validating through transient failures
                logger.exception("validator step failed: {}", e)
            done += 1
            wait = max(0.0, self.cfg.challenge_interval_s - (time.monotonic() - t0))
            if steps is not None and done >= steps:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)
