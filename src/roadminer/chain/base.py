"""The miner's and validator's view of the subnet: who is registered, with what stake and permit.

Lookups are synchronous reads of an in-memory snapshot (they run on every request, before the body is
read); ``sync()`` refreshes the snapshot from the source and a background task calls it periodically.
Implementations: ``local`` (file-backed, for tests, the simulator and local runs) and bittensor 11
(``roadminer.chain.bittensor11``), chosen by ``build_chain``.
"""

from __future__ import annotations

import asyncio
import bisect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from roadminer.core.aio import cancel_and_wait


@dataclass(frozen=True)
class NeuronInfo:
    uid: int
    hotkey: str
    stake: float = 0.0
    validator_permit: bool = False
    coldkey: str = ""
    ip: str = ""
    port: int = 0
    active: bool = True
    incentive: float = 0.0
    trust: float = 0.0
    consensus: float = 0.0
    emission: float = 0.0
    dividends: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class ChainSnapshot:
    netuid: int
    block: int = 0
    neurons: list[NeuronInfo] = field(default_factory=list)
    # weights[validator_uid][miner_uid] = normalised weight in [0, 1]
    weights: dict[int, dict[int, float]] = field(default_factory=dict)
    epoch: int | None = None  # block of the subnet's last epoch (bittensor 11 Metagraph.last_step)

    def __post_init__(self) -> None:
        self.by_hotkey = {n.hotkey: n for n in self.neurons}
        self.by_uid = {n.uid: n for n in self.neurons}
        self._validator_stakes = sorted(n.stake for n in self.neurons if n.validator_permit)


class ChainView(ABC):
    """Read-only view of one subnet. Subclasses implement ``_load()``; everything else is shared."""

    network: str = "abstract"

    def __init__(self, netuid: int, sync_interval_s: float = 120.0) -> None:
        self.netuid = netuid
        self.sync_interval_s = sync_interval_s
        self._snap = ChainSnapshot(netuid=netuid)
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    # -- source ------------------------------------------------------------------------------------
    @abstractmethod
    async def _load(self) -> ChainSnapshot:
        """Read the current state from the source (file, chain)."""

    async def sync(self) -> bool:
        """Refresh the snapshot; on failure keep the previous one (never raises)."""
        try:
            snap = await self._load()
        except Exception as e:  # a chain outage must not take the miner down
            self.last_error = f"{type(e).__name__}: {e}"
            logger.warning("chain sync failed ({}); keeping the previous view", self.last_error)
            return False
        self._snap = snap
        self.last_error = None
        return True

    async def start(self) -> None:
        await self.sync()
        if self._task is None and self.sync_interval_s > 0:
            self._task = asyncio.create_task(self._loop(), name=f"chain-sync-{self.network}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.sync_interval_s)
            await self.sync()

    # -- lookups ------------------------------------------------------------------------------------
    @property
    def block(self) -> int:
        return self._snap.block

    def snapshot(self) -> ChainSnapshot:
        """The current view as one object (reward forensics reads neurons and weights together)."""
        return self._snap

    def get(self, hotkey: str) -> NeuronInfo | None:
        return self._snap.by_hotkey.get(hotkey)

    def by_uid(self, uid: int) -> NeuronInfo | None:
        return self._snap.by_uid.get(uid)

    def neurons(self) -> list[NeuronInfo]:
        return list(self._snap.neurons)

    def validators(self) -> list[NeuronInfo]:
        return [n for n in self._snap.neurons if n.validator_permit]

    def self_info(self, hotkey: str) -> NeuronInfo | None:
        """This node's own neuron (None when not registered)."""
        return self.get(hotkey)

    def weights_for(self, miner_uid: int) -> dict[int, float]:
        """Each validator's weight on ``miner_uid``: ``{validator_uid: weight}``."""
        return {v: row[miner_uid] for v, row in self._snap.weights.items() if miner_uid in row}

    def weights(self) -> dict[int, dict[int, float]]:
        return {v: dict(row) for v, row in self._snap.weights.items()}

    def stake_quantile(self, hotkey: str) -> float:
        """Share of permitted validators with stake <= this caller's, in [0, 1] (0 when unknown)."""
        n = self.get(hotkey)
        stakes = self._snap._validator_stakes
        if n is None or not stakes:
            return 0.0
        return bisect.bisect_right(stakes, n.stake) / len(stakes)

    def describe(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "netuid": self.netuid,
            "block": self.block,
            "neurons": len(self._snap.neurons),
            "validators": len(self._snap._validator_stakes),
            "last_error": self.last_error,
        }


def build_chain(settings: Any) -> ChainView:
    """The chain view the settings ask for (``settings.chain.network``: local | finney | test | URL)."""
    cfg = settings.chain
    if cfg.network == "local":
        from roadminer.chain.local import LocalChainView

        return LocalChainView(cfg.local_config, netuid=cfg.netuid)
    try:
        from roadminer.chain import bittensor11
    except ImportError as e:
        raise RuntimeError(f"chain network {cfg.network!r} needs roadminer.chain.bittensor11: {e}") from e
    return bittensor11.from_settings(settings)
