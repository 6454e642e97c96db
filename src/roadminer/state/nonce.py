"""Replay protection for both wire protocols, shared by every worker through the state store.

- SN72 (bittensor axon rule): per endpoint ``{hotkey}:{uuid}`` the nonce must strictly increase; a
  first-seen endpoint must present a nonce inside the freshness window. ``advance`` implements it.
- btauth/1: each ``(hotkey, nonce)`` pair is accepted once inside the freshness window.
  ``check_and_store`` implements it.

With the Redis backend, two miner processes (or two apps in one process) share the state, so a request
replayed to the other worker is refused too. ``NonceStore.memory()`` keeps it per process.
"""

from __future__ import annotations

from typing import Any

from roadminer.protocol.sn72 import NonceVerdict
from roadminer.state.store import StateStore

SN72_PREFIX = "nonce:sn72:"
BTAUTH_PREFIX = "nonce:btauth:"


class RetentionError(ValueError):
    """The nonce store would forget nonces while a replay of them could still pass the freshness window."""


class NonceStore:
    """Nonce bookkeeping over a ``StateStore`` (memory or Redis, with the store's own fallback).

    ``endpoint_ttl_s``: how long an SN72 endpoint's last nonce is kept after it was accepted;
    ``btauth_ttl_s``: how long a btauth/1 ``(hotkey, nonce)`` pair is kept. Each must cover its protocol's
    freshness window (``check_retention``), else a request replayed after its entry expired but inside
    the window would be accepted again.
    """

    def __init__(self, store: StateStore, endpoint_ttl_s: float = 3600.0, btauth_ttl_s: float = 60.0) -> None:
        # An hour is far beyond the SN72 window (4 s + at most 12 s) and bounds memory for Dendrites that
        # come and go.
        self.store = store
        self.endpoint_ttl_s = endpoint_ttl_s
        self.btauth_ttl_s = btauth_ttl_s
        # bittensor.http_auth checks that a store with ``retention`` covers its window.
        self.retention = btauth_ttl_s

    def check_retention(self, sn72_window_s: float, btauth_window_s: float) -> None:
        """Raise ``RetentionError`` unless each TTL is at least its protocol's longest freshness window."""
        problems = []
        if self.endpoint_ttl_s < sn72_window_s:
            problems.append(
                f"SN72 endpoint nonces are kept {self.endpoint_ttl_s:g} s but the freshness window is "
                f"{sn72_window_s:g} s (guards.nonce_allowed_delta_s + guards.sn72_max_timeout_s)"
            )
        if self.btauth_ttl_s < btauth_window_s:
            problems.append(
                f"btauth/1 nonces are kept {self.btauth_ttl_s:g} s but the freshness window is "
                f"{btauth_window_s:g} s (guards.btauth_max_age_s + guards.btauth_allowed_skew_s)"
            )
        if problems:
            raise RetentionError("nonce retention shorter than the replay window: " + "; ".join(problems))

    @classmethod
    def memory(cls, **kwargs: Any) -> NonceStore:
        from roadminer.state.backends.memory import MemoryStore

        return cls(MemoryStore(), **kwargs)

    @classmethod
    def from_config(cls, cfg: Any, **kwargs: Any) -> NonceStore:
        """``cfg``: ``roadminer.core.config.StateConfig``."""
        from roadminer.state.store import build_store

        return cls(build_store(cfg), **kwargs)

    async def advance(self, endpoint_key: str, nonce_ns: int, first_min_ns: int | None) -> str:
        """SN72 rule. ``first_min_ns``: a first-seen endpoint needs ``nonce > first_min_ns`` (the miner
        always passes one; None skips the freshness rule). Records the nonce when accepted."""
        key = SN72_PREFIX + endpoint_key
        if first_min_ns is not None and nonce_ns <= first_min_ns and not await self.store.exists(key):
            return NonceVerdict.STALE
        if await self.store.set_if_greater(key, int(nonce_ns), ttl=self.endpoint_ttl_s):
            return NonceVerdict.OK
        return NonceVerdict.REPLAY

    async def check_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool:
        """btauth/1 rule: True (and recorded) the first time this pair is seen."""
        return await self.store.set_nx(
            f"{BTAUTH_PREFIX}{hotkey_ss58}:{int(nonce_ns)}", b"1", ttl=self.btauth_ttl_s
        )

    async def close(self) -> None:
        close = getattr(self.store, "close", None)
        if close is not None:
            await close()

    def describe(self) -> dict[str, Any]:
        describe = getattr(self.store, "describe", None)
        return describe() if describe else {"backend": type(self.store).__name__}
