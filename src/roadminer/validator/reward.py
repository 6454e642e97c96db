"""Reward and score EMA exactly as the reference validator computes them.

Per miner a rolling window of the last 100 (prediction, label) pairs, scored by the reward rule of
:mod:`roadminer.core.scoring` (a failed query is recorded as -1: it takes a slot, then is dropped).

    score = 0.05 * reward + 0.95 * score          (queried UIDs; validators' UIDs forced to 0)

Scores and histories are reset when the hotkey behind a UID changes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from roadminer.core.scoring import (
    FAILED,
    WINDOW_MCC,
    WindowMetrics,
    is_valid_prediction,
    reward_from_history,
    window_metrics,
)

HISTORY_LEN = 100
EMA_ALPHA = 0.05


@dataclass
class MinerRecord:
    hotkey: str
    history: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=HISTORY_LEN))

    def to_json(self) -> dict[str, Any]:
        return {"hotkey": self.hotkey, "history": [[p, y] for p, y in self.history]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MinerRecord:
        rec = cls(hotkey=str(data["hotkey"]))
        for p, y in data.get("history", [])[-HISTORY_LEN:]:
            rec.history.append((float(p), int(y)))
        return rec


class PerformanceTracker:
    """Per-UID rolling histories, keyed by the hotkey that held the UID when it answered."""

    def __init__(self) -> None:
        self.records: dict[int, MinerRecord] = {}

    def reset(self, uid: int, hotkey: str) -> None:
        self.records[uid] = MinerRecord(hotkey=hotkey)

    def record(self, uid: int, hotkey: str, prediction: float | None, label: int) -> float:
        """Add one answer and return its reward (0 for a failed answer)."""
        rec = self.records.get(uid)
        if rec is None or rec.hotkey != hotkey:
            self.reset(uid, hotkey)
            rec = self.records[uid]
        ok = prediction is not None and is_valid_prediction(prediction)
        rec.history.append((float(prediction) if ok else FAILED, int(label)))  # type: ignore[arg-type]
        return reward_from_history(rec.history) if ok else 0.0

    def metrics(self, uid: int, window: int = WINDOW_MCC) -> WindowMetrics:
        rec = self.records.get(uid)
        return window_metrics(rec.history if rec else [], window)

    def to_json(self) -> dict[str, Any]:
        return {str(uid): rec.to_json() for uid, rec in self.records.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PerformanceTracker:
        t = cls()
        for uid, rec in data.items():
            t.records[int(uid)] = MinerRecord.from_json(rec)
        return t


class ScoreBook:
    """Score EMA over UIDs plus the per-UID histories: the validator's whole scoring state."""

    def __init__(self, n: int = 0, alpha: float = EMA_ALPHA) -> None:
        self.alpha = alpha
        self.scores = np.zeros(n, dtype=np.float64)
        self.hotkeys: list[str] = [""] * n
        self.tracker = PerformanceTracker()
        self.step = 0

    def sync_hotkeys(self, hotkeys: Sequence[str]) -> list[int]:
        """Follow the metagraph: resize, and reset UIDs whose hotkey changed (returned)."""
        n = len(hotkeys)
        if n != len(self.scores):
            scores = np.zeros(n, dtype=np.float64)
            k = min(n, len(self.scores))
            scores[:k] = self.scores[:k]
            self.scores = scores
            self.hotkeys = (self.hotkeys + [""] * n)[:n]
        reset: list[int] = []
        for uid, hk in enumerate(hotkeys):
            if self.hotkeys[uid] != hk:
                if self.hotkeys[uid]:
                    reset.append(uid)
                self.scores[uid] = 0.0
                self.tracker.reset(uid, hk)
                self.hotkeys[uid] = hk
        for uid in [u for u in self.tracker.records if u >= n]:
            del self.tracker.records[uid]
        return reset

    def score_answers(
        self,
        uids: Sequence[int],
        predictions: Sequence[float | None],
        label: int,
        validator_uids: Iterable[int] = (),
    ) -> np.ndarray:
        """Record one challenge's answers, return the rewards and update the EMA of the queried UIDs."""
        rewards = np.zeros(len(uids), dtype=np.float64)
        for i, (uid, pred) in enumerate(zip(uids, predictions, strict=True)):
            hotkey = self.hotkeys[uid] if uid < len(self.hotkeys) else ""
            rewards[i] = self.tracker.record(uid, hotkey, pred, label)
        self.update_ema(uids, rewards, validator_uids)
        self.step += 1
        return rewards

    def update_ema(
        self, uids: Sequence[int], rewards: Sequence[float], validator_uids: Iterable[int] = ()
    ) -> None:
        if len(uids):
            idx = np.asarray(uids, dtype=np.int64)
            r = np.nan_to_num(np.asarray(rewards, dtype=np.float64), nan=0.0)
            self.scores[idx] = self.alpha * r + (1.0 - self.alpha) * self.scores[idx]
        for v in validator_uids:
            if 0 <= v < len(self.scores):
                self.scores[v] = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "alpha": self.alpha,
            "step": self.step,
            "scores": [float(s) for s in self.scores],
            "hotkeys": list(self.hotkeys),
            "tracker": self.tracker.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScoreBook:
        book = cls(0, alpha=float(data.get("alpha", EMA_ALPHA)))
        book.scores = np.asarray(data.get("scores", []), dtype=np.float64)
        book.hotkeys = [str(h) for h in data.get("hotkeys", [])]
        if len(book.hotkeys) != len(book.scores):
            raise ValueError("score state is inconsistent: hotkeys and scores differ in length")
        book.tracker = PerformanceTracker.from_json(data.get("tracker", {}))
        book.step = int(data.get("step", 0))
        return book
