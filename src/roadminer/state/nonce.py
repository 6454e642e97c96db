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


class NonceStore:
    """Nonce bookkeeping over a ``StateStore`` (memory or Redis, with the store's own fallback)."""

    def __init__(self, store: StateStore, endpoint_ttl_s: float = 3600.0, btauth_ttl_s: float = 60.0) -> None:
        # An endpoint entry may expire once its nonces would fail the freshness window anyway; an hour
        # is far beyond any window and bounds memory for Dendrites that come and go.
        self.store = store
        self.endpoint_ttl_s = endpoint_ttl_s
        self.btauth_ttl_s = btauth_ttl_s
        # bittensor.http_auth checks that a store with ``retention`` covers its window.
        self.retention = btauth_ttl_s

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
        """SN72 rule. ``first_min_ns``: a first-seen endpoint needs ``nonce > first_min_ns`` (None: no
        freshness rule, as for pre-7.2 Dendrites). Records the nonce when accepted."""
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
