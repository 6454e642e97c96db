"""Chain view on bittensor 11: metagraph sync on a background task, ServeAxon, SetWeights.

Every chain call goes through ``with_retries`` (exponential backoff). A chain outage never stops the
miner answering: ``ChainView.sync`` keeps the previous snapshot when a load fails, and ServeAxon /
SetWeights failures are logged and reported as ``False``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from loguru import logger

from roadminer.chain.base import ChainSnapshot, ChainView, NeuronInfo

T = TypeVar("T")


async def with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    attempts: int = 4,
    base_delay_s: float = 1.0,
    max_delay_s: float = 30.0,
    what: str = "chain call",
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Run ``fn`` up to ``attempts`` times with jittered exponential backoff; re-raise the last error."""
    last: BaseException | None = None
    for i in range(attempts):
        try:
            return await fn()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            last = e
            if i == attempts - 1:
                break
            delay = min(max_delay_s, base_delay_s * 2**i) * (0.5 + random.random() / 2)
            logger.warning(
                "{} failed ({}: {}); retry {}/{} in {:.1f}s",
                what,
                type(e).__name__,
                e,
                i + 1,
                attempts - 1,
                delay,
            )
            await sleep(delay)
    assert last is not None
    raise last


def _float(v: Any) -> float:
    """Balances and plain numbers alike. A bittensor 11 ``Balance`` is read in its own unit (``amount``:
    TAO, or the subnet's alpha for stakes and emission; its ``.tao`` raises on alpha)."""
    if v is None:
        return 0.0
    for attr in ("amount", "tao", "value"):
        try:
            got = getattr(v, attr, None)
            if got is not None:
                return float(got)
        except (TypeError, ValueError):  # bittensor's UnitMismatchError is a TypeError
            continue
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


def _split_axon(axon: str | None) -> tuple[str, int]:
    if not axon:
        return "", 0
    host, _, port = axon.rpartition(":")
    host = host.strip("[]")
    try:
        return host, int(port)
    except ValueError:
        return "", 0


def snapshot_from_metagraph(
    mg: Any, netuid: int, weights: dict[int, dict[int, float]] | None = None
) -> ChainSnapshot:
    """``bittensor.metagraph.Metagraph`` -> ``ChainSnapshot`` (stake = total stake). ``weights`` is the
    ``client.weights.weights(netuid)`` read (rows already normalised): bittensor 11's metagraph carries no
    weight matrix; a raw runtime record that does (``raw["weights"]``, u16 pairs) is used otherwise."""
    neurons = []
    for n in mg.neurons:
        ip, port = _split_axon(getattr(n, "axon", None))
        neurons.append(
            NeuronInfo(
                uid=int(n.uid),
                hotkey=str(n.hotkey),
                stake=_float(getattr(n, "total_stake", 0.0)),
                validator_permit=bool(getattr(n, "validator_permit", False)),
                coldkey=str(getattr(n, "coldkey", "")),
                ip=ip,
                port=port,
                active=bool(getattr(n, "active", True)),
                incentive=_float(getattr(n, "incentive", 0.0)),
                trust=_float(getattr(n, "trust", 0.0)),
                consensus=_float(getattr(n, "consensus", 0.0)),
                emission=_float(getattr(n, "emission", 0.0)),
                dividends=_float(getattr(n, "dividends", 0.0)),
            )
        )
    if weights is not None:
        rows = {int(v): {int(m): float(w) for m, w in row.items()} for v, row in weights.items()}
        return ChainSnapshot(
            netuid=netuid, block=int(getattr(mg, "block", 0) or 0), neurons=neurons, weights=rows,
            epoch=getattr(mg, "last_step", None),
        )
    parsed: dict[int, dict[int, float]] = {}
    raw = getattr(mg, "raw", None) or {}
    for row in raw.get("weights", []) if isinstance(raw, dict) else []:
        # runtime layout: [validator_uid, [[miner_uid, u16], ...]]
        try:
            v_uid, pairs = row
            total = sum(int(w) for _, w in pairs) or 1
            parsed[int(v_uid)] = {int(m): int(w) / total for m, w in pairs}
        except (TypeError, ValueError):
            continue
    return ChainSnapshot(
        netuid=netuid, block=int(getattr(mg, "block", 0) or 0), neurons=neurons, weights=parsed,
        epoch=getattr(mg, "last_step", None),
    )


class Bittensor11ChainView(ChainView):
    """Metagraph of ``netuid`` on ``network`` (finney | test | ws://...), refreshed every sync interval."""

    def __init__(
        self,
        network: str,
        netuid: int,
        sync_interval_s: float = 120.0,
        wallet: Any = None,
        attempts: int = 4,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        """``client_factory``: builds the (unconnected) ``bittensor.Client``; default ``Client(network)``.
        Tests pass ``Client(network, substrate=...)``, the SDK's own seam for an in-memory chain."""
        super().__init__(netuid, sync_interval_s)
        self.network = network
        self.wallet = wallet
        self.attempts = attempts
        self.client_factory = client_factory
        self.last_write_error: str | None = None
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def _connected(self) -> Any:
        async with self._lock:
            if self._client is None:
                if self.client_factory is not None:
                    client = self.client_factory()
                else:
                    import bittensor as bt

                    client = bt.Client(self.network)
                self._client = await client.connect()
            return self._client

    async def _reset_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception as e:
                logger.debug("closing chain client: {}", e)

    async def _load(self) -> ChainSnapshot:
        from bittensor import metagraph as bt_metagraph

        async def once() -> ChainSnapshot:
            try:
                client = await self._connected()
                mg = await bt_metagraph.fetch(client, self.netuid, commitments=False)
                # The weight matrix is a separate read (the metagraph omits it); reward forensics needs it.
                weights = await client.weights.weights(self.netuid) if mg is not None else None
            except Exception:
                await self._reset_client()
                raise
            if mg is None:
                raise RuntimeError(f"subnet {self.netuid} does not exist on {self.network}")
            return snapshot_from_metagraph(mg, self.netuid, weights)

        return await with_retries(once, attempts=self.attempts, what=f"metagraph sync ({self.network})")

    async def _execute(self, intent: Any, what: str, signer: Any = None) -> bool:
        """Sign (``signer``: a wallet or a ``bittensor`` Signer such as ``HotkeySigner``; default the
        view's wallet) and submit ``intent``. False on failure, with the reason in ``last_write_error``."""
        signer = signer if signer is not None else self.wallet
        if signer is None:
            self.last_write_error = "no wallet configured"
            logger.warning("{}: no wallet configured", what)
            return False

        async def once() -> Any:
            client = await self._connected()
            result = await client.execute(intent, signer)
            return result.raise_for_failure() if hasattr(result, "raise_for_failure") else result

        try:
            await with_retries(once, attempts=self.attempts, what=what)
            self.last_write_error = None
            return True
        except Exception as e:
            self.last_write_error = f"{type(e).__name__}: {e}"
            logger.error("{} failed after {} attempts: {}", what, self.attempts, e)
            return False

    async def serve_axon(
        self, ip: str, port: int, signer: Any = None, version: int = 1, protocol: int = 4
    ) -> bool:
        """ServeAxon (``SubtensorModule.serve_axon``) for the hotkey of ``signer`` (default: the wallet's)."""
        from bittensor.intents.serving import ServeAxon

        intent = ServeAxon(netuid=self.netuid, ip=ip, port=int(port), protocol=protocol, version=int(version))
        return await self._execute(intent, f"ServeAxon {ip}:{port}", signer)

    async def set_weights(self, uids: list[int], weights: list[int], version_key: int) -> bool:
        from bittensor.intents.weights import SetWeights

        intent = SetWeights(
            netuid=self.netuid, uids=list(uids), weights=list(weights), version_key=version_key
        )
        return await self._execute(intent, "SetWeights")

    async def stop(self) -> None:
        await super().stop()
        await self._reset_client()


def from_settings(settings: Any) -> Bittensor11ChainView:
    wallet = None
    try:
        from roadminer.protocol.keys import load_wallet

        w = settings.wallet
        wallet = load_wallet(w.path, w.name, w.hotkey, create_if_missing=False)
    except Exception as e:  # a read-only view still works without a wallet
        logger.warning("chain view without a wallet ({}): ServeAxon/SetWeights disabled", e)
    return Bittensor11ChainView(
        settings.chain.network, settings.chain.netuid, settings.chain.sync_interval_s, wallet=wallet
    )
