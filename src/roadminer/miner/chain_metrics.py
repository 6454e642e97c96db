"""Chain metrics of a running miner: every ``interval_s`` this hotkey's incentive, trust, consensus and
emission (and each validator's weight for it) from the chain view into the state history and the on-chain
Prometheus gauges."""

from __future__ import annotations

import asyncio

from roadminer.chain.base import ChainView
from roadminer.core.aio import cancel_and_wait, repeat_forever
from roadminer.core.metrics import CHAIN_CONSENSUS, CHAIN_EMISSION, CHAIN_INCENTIVE, CHAIN_TRUST
from roadminer.state.history import ChainSnapshot
from roadminer.state.layer import StateLayer


class ChainMetricsRecorder:
    """Every ``interval_s``: this miner's incentive/trust/consensus/emission (and each validator's weight
    for it) from the chain view into the state history and the on-chain gauges. Failures are logged."""

    def __init__(self, chain: ChainView, state: StateLayer | None, hotkey: str, interval_s: float) -> None:
        self.chain = chain
        self.state = state
        self.hotkey = hotkey
        self.interval_s = interval_s
        self.recorded = 0
        self._task: asyncio.Task[None] | None = None

    async def record_once(self) -> bool:
        """True when the chain knows this hotkey and the numbers were recorded."""
        me = self.chain.self_info(self.hotkey)
        if me is None:
            return False
        CHAIN_INCENTIVE.set(me.incentive)
        CHAIN_TRUST.set(me.trust)
        CHAIN_CONSENSUS.set(me.consensus)
        CHAIN_EMISSION.set(me.emission)
        weights: dict[str, float] = {}
        for v_uid, w in self.chain.weights_for(me.uid).items():
            v = self.chain.by_uid(v_uid)
            if v is not None:
                weights[v.hotkey] = float(w)
        if self.state is not None:
            await self.state.rewards.record_chain(
                ChainSnapshot(
                    incentive=me.incentive,
                    trust=me.trust,
                    emission=me.emission,
                    consensus=me.consensus,
                    weights=weights,
                )
            )
        self.recorded += 1
        return True

    async def _run(self) -> None:
        await repeat_forever(self.interval_s, self.record_once, "recording chain metrics")

    def start(self) -> None:
        if self._task is None and self.interval_s > 0:
            self._task = asyncio.create_task(self._run(), name="chain-metrics")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None


