"""Reward forensics from the chain: what each epoch paid us and who rated us how.

A miner never learns in-band whether an answer was right; the chain is the only feedback. Per epoch
(``Metagraph.last_step``, the block the subnet's last epoch ran at) this records our incentive, trust,
consensus and emission, and for every validator with a permit its stake and the weight its row gives
our UID (bittensor 11: ``client.weights.weights(netuid)``, rows normalised to sum 1; the metagraph
itself carries no weights).

From those records:

* **who rates us low**: each validator's weight on us relative to the stake-weighted consensus of all
  validators' weights on us (1.0 = rates us like the stake majority, 0 = gives us nothing);
* **alerts**: ``validator_drop`` when one validator's weight on us falls by at least ``drop`` (share of
  its recent median) while the others' stake-weighted weight holds within ``hold``, i.e. one validator
  (a broken or hostile one, or one whose challenges we fail) turned on us; ``broad_drop`` when the
  stake-weighted weight of all validators falls by ``drop`` (our answers got worse for everyone).

Records and alerts live in the state store (``forensics:epochs``, ``forensics:alerts``), so the
dashboard (``roadminer.dashboard.forensics_panel``) shows them beside the reward charts.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from loguru import logger

from roadminer.core.aio import cancel_and_wait, repeat_forever


class ListStore(Protocol):
    """The two list primitives of ``roadminer.state.store.StateStore`` this module needs (the chain
    package sits beside the state package and does not import it)."""

    async def list_push(self, key: str, value: bytes, maxlen: int | None = None) -> None: ...

    async def list_range(self, key: str, start: int = 0, stop: int = -1) -> list[bytes]: ...


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


EPOCHS_KEY = "forensics:epochs"
ALERTS_KEY = "forensics:alerts"
MAX_EPOCHS = 2000
MAX_ALERTS = 500


def _amount(v: Any) -> float:
    """A ``bittensor.Balance`` in its own unit (stakes and emission are the subnet's alpha) or a number."""
    from roadminer.chain.bittensor11 import _float

    return _float(v)


@dataclass(frozen=True)
class ValidatorRating:
    uid: int
    hotkey: str
    stake: float
    weight: float | None  # its row's share for our UID; None: the validator has set no weights at all

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpochRecord:
    netuid: int
    epoch: int  # block of the epoch (Metagraph.last_step; the block on chains without one)
    block: int
    t: float
    uid: int
    hotkey: str
    incentive: float
    trust: float
    consensus: float
    emission: float  # in the subnet's token
    validators: list[ValidatorRating] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["validators"] = [v.to_json() for v in self.validators]
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EpochRecord:
        vals = [ValidatorRating(int(v["uid"]), str(v["hotkey"]), float(v["stake"]),
                                None if v.get("weight") is None else float(v["weight"]))
                for v in d.get("validators", [])]
        return cls(int(d["netuid"]), int(d["epoch"]), int(d["block"]), float(d["t"]), int(d["uid"]),
                   str(d["hotkey"]), float(d["incentive"]), float(d["trust"]), float(d["consensus"]),
                   float(d["emission"]), vals)

    def consensus_weight(self) -> float | None:
        """Stake-weighted mean of the validators' weights on us (validators that set weights)."""
        rated = [v for v in self.validators if v.weight is not None and v.stake > 0]
        total = sum(v.stake for v in rated)
        if not rated or total <= 0:
            return None
        return sum(v.stake * (v.weight or 0.0) for v in rated) / total


def record_from_metagraph(
    mg: Any, weights: Mapping[int, Mapping[int, float]], hotkey: str, t: float | None = None
) -> EpochRecord | None:
    """One epoch from bittensor 11's ``Metagraph`` and its ``weights`` read (``{validator uid: {miner uid:
    share}}``); None when ``hotkey`` is not registered."""
    me = mg.by_hotkey(hotkey)
    if me is None:
        return None
    vals = []
    for n in mg.neurons:
        if not n.validator_permit or n.uid == me.uid:
            continue
        row = weights.get(n.uid)
        vals.append(ValidatorRating(int(n.uid), str(n.hotkey), _amount(n.total_stake),
                                    None if not row else float(row.get(me.uid, 0.0))))
    return EpochRecord(
        netuid=int(mg.netuid),
        epoch=int(getattr(mg, "last_step", 0) or mg.block),
        block=int(mg.block),
        t=time.time() if t is None else float(t),
        uid=int(me.uid),
        hotkey=str(me.hotkey),
        incentive=float(me.incentive),
        trust=float(me.trust),
        consensus=float(me.consensus),
        emission=_amount(me.emission),
        validators=vals,
    )


def record_from_snapshot(snap: Any, hotkey: str, t: float | None = None) -> EpochRecord | None:
    """The same from the chain view's ``ChainSnapshot`` (what the running miner holds)."""
    me = snap.by_hotkey.get(hotkey)
    if me is None:
        return None
    vals = []
    for n in snap.neurons:
        if not n.validator_permit or n.uid == me.uid:
            continue
        row = snap.weights.get(n.uid)
        vals.append(ValidatorRating(n.uid, n.hotkey, float(n.stake), None if not row else float(row.get(me.uid, 0.0))))
    epoch = getattr(snap, "epoch", None)
    return EpochRecord(snap.netuid, int(epoch if epoch else snap.block), int(snap.block),
                       time.time() if t is None else float(t), me.uid, me.hotkey, float(me.incentive),
                       float(me.trust), float(me.consensus), float(me.emission), vals)


@dataclass(frozen=True)
class LowRating:
    uid: int
    hotkey: str
    stake: float
    weight: float | None
    relative: float | None  # weight / consensus weight; None when it set no weights


def who_rates_us_low(rec: EpochRecord) -> list[LowRating]:
    """Validators by their weight on us relative to the stake-weighted consensus, lowest first;
    those that set no weights at all come last."""
    cw = rec.consensus_weight()
    out = [
        LowRating(v.uid, v.hotkey, v.stake, v.weight,
                  None if v.weight is None or not cw else v.weight / cw)
        for v in rec.validators
    ]
    return sorted(out, key=lambda r: (r.relative is None, r.relative if r.relative is not None else 0.0, -r.stake))


@dataclass(frozen=True)
class Alert:
    kind: str  # validator_drop | broad_drop
    epoch: int
    t: float
    message: str
    hotkey: str = ""
    uid: int = -1
    stake: float = 0.0
    before: float = 0.0  # median weight on us over the previous epochs
    after: float = 0.0
    others_ratio: float | None = None  # others' stake-weighted weight now / before

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def detect_alerts(
    records: Sequence[EpochRecord], window: int = 3, drop: float = 0.5, hold: float = 0.2, min_weight: float = 1e-4
) -> list[Alert]:
    """Alerts for the latest record against the median of up to ``window`` records before it."""
    if len(records) < 2:
        return []
    now, past = records[-1], list(records[-1 - window : -1])
    base: dict[int, float] = {}
    for uid in {v.uid for r in past for v in r.validators}:
        ws = [v.weight for r in past for v in r.validators if v.uid == uid and v.weight is not None]
        if ws:
            base[uid] = float(statistics.median(ws))
    cur = {v.uid: v for v in now.validators}
    tracked = [uid for uid, b in base.items() if b >= min_weight and uid in cur and cur[uid].weight is not None]
    alerts: list[Alert] = []

    def stake_ratio(uids: Sequence[int]) -> float | None:
        b = sum(cur[u].stake * base[u] for u in uids)
        return None if b <= 0 else sum(cur[u].stake * (cur[u].weight or 0.0) for u in uids) / b

    everyone = stake_ratio(tracked)
    if everyone is not None and everyone < 1 - drop:
        alerts.append(Alert("broad_drop", now.epoch, now.t,
                            f"validators' stake-weighted weight on UID {now.uid} fell to {everyone:.0%} of its "
                            f"recent level: our answers got worse for everyone", uid=now.uid,
                            others_ratio=everyone))
        return alerts
    for uid in tracked:
        v = cur[uid]
        after = v.weight or 0.0
        if after >= (1 - drop) * base[uid]:
            continue
        others = stake_ratio([u for u in tracked if u != uid])
        if others is None or others < 1 - hold:
            continue
        alerts.append(Alert(
            "validator_drop", now.epoch, now.t,
            f"validator {v.hotkey} (UID {uid}, stake {v.stake:,.0f}) cut its weight on UID {now.uid} from "
            f"{base[uid]:.4f} to {after:.4f} while the others held ({others:.0%})",
            hotkey=v.hotkey, uid=uid, stake=v.stake, before=base[uid], after=after, others_ratio=others,
        ))
    return alerts


class ForensicsLog:
    """Epoch records and alerts in the state store (newest first in the lists)."""

    def __init__(self, store: ListStore) -> None:
        self.store = store

    async def records(self, limit: int | None = None) -> list[EpochRecord]:
        """Oldest first."""
        raw = await self.store.list_range(EPOCHS_KEY, 0, -1 if limit is None else limit - 1)
        out = []
        for r in reversed(raw):
            try:
                out.append(EpochRecord.from_json(json.loads(r)))
            except (ValueError, KeyError, TypeError):
                continue
        return out

    async def add(self, rec: EpochRecord) -> bool:
        """Append a record for a new epoch (False: that epoch is already recorded)."""
        last = await self.records(limit=1)
        if last and last[-1].epoch >= rec.epoch and last[-1].uid == rec.uid:
            return False
        await self.store.list_push(EPOCHS_KEY, dumps(rec.to_json()), MAX_EPOCHS)
        return True

    async def add_alerts(self, alerts: Sequence[Alert]) -> None:
        for a in alerts:
            await self.store.list_push(ALERTS_KEY, dumps(a.to_json()), MAX_ALERTS)

    async def alerts(self, since: float | None = None) -> list[dict[str, Any]]:
        out = []
        for r in await self.store.list_range(ALERTS_KEY):
            try:
                a = json.loads(r)
                if since is None or float(a["t"]) >= since:
                    out.append(a)
            except (ValueError, KeyError, TypeError):
                continue
        return out  # newest first

    async def observe(self, rec: EpochRecord, **alert_args: Any) -> list[Alert] | None:
        """Record a new epoch and raise its alerts (logged as warnings); None when the epoch is known."""
        if not await self.add(rec):
            return None
        alerts = detect_alerts(await self.records(limit=1 + alert_args.pop("window", 3)), **alert_args)
        await self.add_alerts(alerts)
        for a in alerts:
            logger.warning("reward forensics: {}", a.message)
        return alerts


class ForensicsRecorder:
    """Every ``interval_s``: this miner's epoch record from the chain view into the log (new epochs only)."""

    def __init__(self, chain: Any, store: ListStore | None, hotkey: str, interval_s: float) -> None:
        self.chain = chain
        self.log = ForensicsLog(store) if store is not None else None
        self.hotkey = hotkey
        self.interval_s = interval_s
        self.recorded = 0
        self._task: asyncio.Task[None] | None = None

    async def record_once(self) -> list[Alert] | None:
        """None when there is nothing new to record (not registered, no state, epoch already recorded);
        else the new epoch's alerts."""
        if self.log is None:
            return None
        rec = record_from_snapshot(self.chain.snapshot(), self.hotkey)
        if rec is None:
            return None
        alerts = await self.log.observe(rec)
        if alerts is not None:
            self.recorded += 1
        return alerts

    async def _run(self) -> None:
        await repeat_forever(self.interval_s, self.record_once, "recording reward forensics")

    def start(self) -> None:
        if self._task is None and self.interval_s > 0 and self.log is not None:
            self._task = asyncio.create_task(self._run(), name="reward-forensics")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
