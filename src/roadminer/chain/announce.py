"""Announcing the miner's axon on chain and keeping it announced.

Validators find a miner through the ``axon`` (ip:port) that its hotkey published with
``SubtensorModule.serve_axon``. ``AxonAnnouncer`` publishes it for every hotkey the process serves
(bittensor 11 ``ServeAxon`` intent, signed by that hotkey), at start-up and again whenever the chain view
shows another address for the hotkey's UID (an old machine, a changed port) or the address to announce
changes. The address is ``server.external_ip`` / ``external_port`` when set, else the bind address and
the bound port; a wildcard bind address (``0.0.0.0``) cannot be announced and is refused with a clear
message.

The chain rate-limits ServeAxon (the subnet's ``serving_rate_limit``, 50 blocks on finney), so the same
hotkey is not re-announced sooner than ``min_gap_s`` after a successful announcement; failed attempts
are retried with exponential backoff up to that gap. Nothing here raises into the miner: failures land
in ``status()`` (and ``/health``) and the log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from loguru import logger

from roadminer.chain.base import NeuronInfo
from roadminer.core.aio import cancel_and_wait

# ServeAxon's protocol tag; bittensor's Axon always published 4.
AXON_PROTOCOL = 4


class AnnounceConfigError(ValueError):
    """The configured address cannot be announced (not an IP, or a wildcard/bind-all address)."""


class AnnouncingChain(Protocol):
    """What the announcer needs of a chain view (``Bittensor11ChainView`` has it)."""

    netuid: int
    last_error: str | None

    def self_info(self, hotkey: str) -> NeuronInfo | None: ...

    async def sync(self) -> bool: ...

    async def serve_axon(
        self, ip: str, port: int, signer: Any = None, version: int = 1, protocol: int = 4
    ) -> bool: ...


def can_announce(chain: Any) -> bool:
    """Whether ``chain`` publishes axons (a bittensor chain; the local chain file does not)."""
    return callable(getattr(chain, "serve_axon", None))


def announce_address(
    host: str, port: int, external_ip: str | None = None, external_port: int | None = None
) -> tuple[str, int]:
    """``(ip, port)`` to publish: the external address when configured, else the bind address and port.

    Raises ``AnnounceConfigError`` for a name instead of an IP, a wildcard address or a bad port."""
    ip = (external_ip or host or "").strip().strip("[]")
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise AnnounceConfigError(
            f"cannot announce {ip!r}: server.external_ip must be an IPv4 or IPv6 address (not a host name)"
        ) from None
    if addr.is_unspecified:
        raise AnnounceConfigError(
            f"cannot announce {ip}: the miner binds every interface; set server.external_ip to the public "
            "address validators reach"
        )
    out_port = int(external_port if external_port is not None else port)
    if not 0 < out_port < 65536:
        raise AnnounceConfigError(f"cannot announce port {out_port}: set server.external_port (1-65535)")
    if addr.is_loopback or addr.is_private or addr.is_link_local:
        logger.warning("announcing {} address {}: validators outside this network cannot reach it",
                       "loopback" if addr.is_loopback else "private", addr)
    return str(addr), out_port


def format_endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass
class AxonStatus:
    """Announcement state of one hotkey (what ``/health`` reports)."""

    hotkey: str
    ip: str
    port: int
    announced: bool = False  # the chain shows this address, or ServeAxon for it succeeded
    confirmed: bool = False  # the chain view shows this address for the hotkey's UID
    uid: int | None = None
    on_chain: str | None = None  # "ip:port" the chain view shows ("" = nothing served)
    announcements: int = 0  # successful ServeAxon calls
    failures: int = 0  # failed ones in a row
    last_announced_at: float | None = None
    last_attempt_at: float | None = None
    error: str | None = None

    @property
    def endpoint(self) -> str:
        return format_endpoint(self.ip, self.port)

    def to_dict(self) -> dict[str, Any]:
        return {
            "announced": self.announced,
            "confirmed": self.confirmed,
            "address": self.endpoint,
            "ip": self.ip,
            "port": self.port,
            "uid": self.uid,
            "on_chain": self.on_chain,
            "announcements": self.announcements,
            "last_announced_at": self.last_announced_at,
            "error": self.error,
        }


@dataclass
class _Target:
    signer: Any  # roadminer.protocol.keys.HotkeySigner (a bittensor 11 Signer)
    status: AxonStatus
    next_try_at: float = 0.0
    force: bool = True  # announce at the next check whatever the chain view shows (start, new address)


@dataclass
class AxonAnnouncer:
    """Keeps every served hotkey's axon announced on ``chain``."""

    chain: AnnouncingChain
    version: int = 1
    check_interval_s: float = 60.0
    min_gap_s: float = 600.0
    retry_base_s: float = 30.0
    clock: Callable[[], float] = time.time
    _targets: dict[str, _Target] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def add(self, signer: Any, ip: str, port: int) -> None:
        """Serve ``signer``'s hotkey at ``ip:port`` (validated with ``announce_address`` beforehand)."""
        hotkey = str(signer.ss58_address)
        self._targets[hotkey] = _Target(signer, AxonStatus(hotkey, ip, int(port)))

    def set_address(self, hotkey: str, ip: str, port: int) -> None:
        """The address of ``hotkey`` changed: announce the new one at the next check (no rate gap)."""
        t = self._targets[hotkey]
        if (t.status.ip, t.status.port) != (ip, int(port)):
            t.status = AxonStatus(hotkey, ip, int(port), uid=t.status.uid, on_chain=t.status.on_chain)
            t.force, t.next_try_at = True, 0.0

    @property
    def hotkeys(self) -> list[str]:
        return list(self._targets)

    def status(self, hotkey: str) -> AxonStatus | None:
        t = self._targets.get(hotkey)
        return t.status if t else None

    def describe(self) -> dict[str, Any]:
        return {hk: t.status.to_dict() for hk, t in self._targets.items()}

    # -- checking -----------------------------------------------------------------------------------
    def _observe(self, t: _Target) -> NeuronInfo | None:
        st = t.status
        me = self.chain.self_info(st.hotkey)
        st.uid = me.uid if me else None
        st.on_chain = (format_endpoint(me.ip, me.port) if me.ip else "") if me else None
        st.confirmed = me is not None and bool(me.ip) and (_same_ip(me.ip, st.ip) and me.port == st.port)
        if st.confirmed:
            st.announced, st.error = True, None
        return me

    async def check_once(self) -> list[str]:
        """Announce every hotkey that needs it now; returns the hotkeys announced in this round."""
        async with self._lock:
            done = []
            for t in self._targets.values():
                if await self._check(t):
                    done.append(t.status.hotkey)
            if done:  # read the new addresses back (the announce waited for finalisation)
                await self.chain.sync()
                for hk in done:
                    self._observe(self._targets[hk])
            return done

    async def _check(self, t: _Target) -> bool:
        st = t.status
        me = self._observe(t)
        now = self.clock()
        if st.confirmed:
            t.force = False
            return False
        if me is None and self.chain.last_error is None:
            # A fresh view without this hotkey: ServeAxon would fail with NotRegistered.
            st.announced = False
            st.error = f"hotkey not registered on netuid {self.chain.netuid}"
            return False
        if now < t.next_try_at:
            return False
        if st.announced and not t.force and st.last_announced_at is not None:
            if now - st.last_announced_at < self.min_gap_s:
                return False  # announced recently; the chain's serving rate limit would refuse another
            logger.warning("chain shows {} for {} (uid {}), not {}: announcing again", st.on_chain or "nothing",
                           st.hotkey, st.uid, st.endpoint)
        return await self._announce(t, now)

    async def _announce(self, t: _Target, now: float) -> bool:
        st = t.status
        st.last_attempt_at = now
        ok = await self.chain.serve_axon(st.ip, st.port, signer=t.signer, version=self.version,
                                         protocol=AXON_PROTOCOL)
        if ok:
            st.announced, st.error, st.failures = True, None, 0
            st.announcements += 1
            st.last_announced_at = now
            t.force = False
            t.next_try_at = now + self.min_gap_s
            logger.info("announced axon {} for hotkey {} on netuid {}", st.endpoint, st.hotkey, self.chain.netuid)
            return True
        st.failures += 1
        st.announced = False
        st.error = getattr(self.chain, "last_write_error", None) or "ServeAxon failed"
        delay = min(self.min_gap_s, self.retry_base_s * 2 ** (st.failures - 1))
        t.next_try_at = now + delay
        logger.error("could not announce axon {} for {} ({}); next try in {:.0f}s", st.endpoint, st.hotkey,
                     st.error, delay)
        return False

    # -- background -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Announce now (every hotkey the chain does not already show at its address), then keep checking."""
        try:
            await self.check_once()
        except Exception as e:  # never stop the miner from starting
            logger.opt(exception=e).error("announcing the axon failed")
        if self._task is None and self.check_interval_s > 0:
            self._task = asyncio.create_task(self._run(), name="axon-announce")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            try:
                await self.check_once()
            except Exception as e:
                logger.opt(exception=e).warning("axon check failed")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.strip("[]")) == ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return a == b


def build_announcer(
    chain: Any, settings: Any, served: list[tuple[Any, int]], version: int
) -> AxonAnnouncer | None:
    """The announcer for ``served`` ``(signer, bound port)`` pairs, or None when the chain does not publish
    axons (the local chain) or announcing is off. ``server.external_port`` applies to the main hotkey; each
    of ``server.extra_hotkeys`` announces its own ``external_port`` (default: its bound port).

    Raises ``AnnounceConfigError`` when an address cannot be announced."""
    if not can_announce(chain) or not getattr(settings.chain, "announce", True):
        return None
    srv = settings.server
    ann = AxonAnnouncer(
        chain,
        version=version,
        check_interval_s=float(getattr(settings.chain, "announce_check_s", 60.0)),
        min_gap_s=float(getattr(settings.chain, "announce_min_gap_s", 600.0)),
    )
    extra_ports = [getattr(x, "external_port", None) for x in srv.extra_hotkeys]
    for i, (signer, port) in enumerate(served):
        ext_port = srv.external_port if i == 0 else (extra_ports[i - 1] if i - 1 < len(extra_ports) else None)
        ip, out_port = announce_address(srv.host, port, srv.external_ip, ext_port)
        ann.add(signer, ip, out_port)
    return ann
