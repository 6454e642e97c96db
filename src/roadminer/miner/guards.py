"""Request guards that run before the model: blacklist, priority under load, per-hotkey rate limit,
request size. Each returns a ``Refusal`` (HTTP status + caller-safe message) or None; none raises.

Order in the routes: blacklist and priority from the headers alone (before the body is read), then
the signature, then the rate limit (after authentication, so nobody can drain a validator's bucket by
claiming its hotkey). Size limits apply while reading the body: after the rate limit on SN72, before
the signature on btauth/1 (whose signature covers the body's hash).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from roadminer.chain.base import ChainView
from roadminer.core.config import GuardConfig


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str
    kind: str  # metrics label: blacklist | priority | rate_limit | size


class Blacklist:
    """Refuses unregistered hotkeys, callers without a validator permit and stake below a minimum."""

    def __init__(self, chain: ChainView, cfg: GuardConfig) -> None:
        self.chain = chain
        self.cfg = cfg

    def check(self, hotkey: str | None) -> Refusal | None:
        if not hotkey:
            return Refusal(403, "Forbidden. Key is blacklisted: missing caller hotkey.", "blacklist")
        if hotkey in self.cfg.blacklist_hotkeys:
            return Refusal(403, f"Forbidden. Key is blacklisted: {hotkey} is on the deny list.", "blacklist")
        if hotkey in self.cfg.whitelist_hotkeys or self.cfg.allow_unregistered:
            return None
        neuron = self.chain.get(hotkey)
        if neuron is None:
            return Refusal(403, f"Forbidden. Key is blacklisted: Unrecognized hotkey {hotkey}.", "blacklist")
        if self.cfg.require_validator_permit and not neuron.validator_permit:
            return Refusal(
                403,
                f"Forbidden. Key is blacklisted: hotkey {hotkey} (uid {neuron.uid}) has no validator permit.",
                "blacklist",
            )
        if neuron.stake < self.cfg.min_stake:
            return Refusal(
                403,
                f"Forbidden. Key is blacklisted: stake {neuron.stake:.1f} of uid {neuron.uid} is "
                f"below the minimum {self.cfg.min_stake:.1f}.",
                "blacklist",
            )
        return None

    def caller_class(self, hotkey: str | None) -> str:
        """Bounded metrics label for the caller."""
        if not hotkey:
            return "anonymous"
        n = self.chain.get(hotkey)
        if n is None:
            return "unregistered"
        return "validator" if n.validator_permit else "neuron"


class LoadShedder:
    """Counts in-flight requests across every app of the process and sheds low-stake callers first.

    Below ``priority_threshold * max_inflight`` everyone is served. Above it, a caller is served only if
    its stake quantile among permitted validators is at least the share of the remaining headroom used
    up: at the threshold everyone, at ``max_inflight`` nobody (503).
    """

    def __init__(self, chain: ChainView, cfg: GuardConfig) -> None:
        self.chain = chain
        self.max_inflight = max(1, cfg.max_inflight)
        self.threshold = min(max(cfg.priority_threshold, 0.0), 1.0)
        self.inflight = 0

    def check(self, hotkey: str | None) -> Refusal | None:
        """Called by a request already counted by ``enter()``: the load is that of the others."""
        others = max(0, self.inflight - 1)
        load = others / self.max_inflight
        if load >= 1.0:
            return Refusal(
                503, f"Service unavailable: miner saturated ({others} requests in flight).", "priority"
            )
        if load < self.threshold:
            return None
        need = (load - self.threshold) / max(1.0 - self.threshold, 1e-9)
        q = self.chain.stake_quantile(hotkey) if hotkey else 0.0
        if q >= need and q > 0.0:
            return None
        return Refusal(
            503,
            f"Service unavailable: miner under load ({others}/{self.max_inflight}); "
            "serving higher-stake validators first.",
            "priority",
        )

    def enter(self) -> None:
        self.inflight += 1

    def leave(self) -> None:
        self.inflight = max(0, self.inflight - 1)


class TokenBucketLimiter:
    """Per-key token bucket: ``rate_per_minute`` sustained, ``burst`` at once. Idle buckets are pruned."""

    def __init__(self, rate_per_minute: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = max(rate_per_minute, 0.0) / 60.0
        self.burst = max(1, int(burst))
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)

    def allow(self, key: str, now: float | None = None) -> bool:
        t = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (float(self.burst), t))
        tokens = min(float(self.burst), tokens + (t - last) * self.rate)
        ok = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if ok else tokens, t)
        if len(self._buckets) > self.max_keys:
            self._prune(t)
        return ok

    def retry_after(self, key: str) -> float:
        tokens, _ = self._buckets.get(key, (0.0, 0.0))
        return max(0.0, (1.0 - tokens) / self.rate) if self.rate > 0 else 60.0

    def _prune(self, now: float) -> None:
        full_after = self.burst / self.rate if self.rate > 0 else 3600.0
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}

    def check(self, key: str) -> Refusal | None:
        if self.allow(key):
            return None
        return Refusal(
            429,
            f"Too many requests: rate limit {self.rate * 60:.0f}/min exceeded; retry in "
            f"{self.retry_after(key):.1f}s.",
            "rate_limit",
        )


def check_content_length(value: str | None, max_bytes: int) -> Refusal | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        return Refusal(400, "Bad Content-Length header.", "size")
    if n > max_bytes:
        return Refusal(413, f"Request body of {n} bytes exceeds the {max_bytes}-byte limit.", "size")
    return None


@dataclass
class Guards:
    """The guards of one miner process (shared by every hotkey it serves)."""

    blacklist: Blacklist
    shedder: LoadShedder
    limiter: TokenBucketLimiter

    @classmethod
    def build(cls, chain: ChainView, cfg: GuardConfig) -> Guards:
        return cls(
            Blacklist(chain, cfg),
            LoadShedder(chain, cfg),
            TokenBucketLimiter(cfg.rate_limit_per_minute, cfg.rate_limit_burst),
        )
