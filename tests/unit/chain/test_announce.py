"""Axon announcement through bittensor 11: the ServeAxon call as the SDK composes and signs it.

The chain view is the real ``Bittensor11ChainView`` over the SDK's real ``Client`` (intent build, executor,
signer resolution, metagraph decoding); only the substrate below the SDK is in memory (``testkit.bt11_chain``).
"""

from __future__ import annotations

import ipaddress

import pytest

from roadminer.chain.announce import AnnounceConfigError, AxonAnnouncer, announce_address, build_announcer
from roadminer.chain.bittensor11 import Bittensor11ChainView
from roadminer.core.config import Settings
from roadminer.protocol.keys import HotkeySigner
from testkit.bt11_chain import InMemorySubnet

EVE = HotkeySigner.from_uri("//Eve")
EVE2 = HotkeySigner.from_uri("//Eve//2")
ALICE = HotkeySigner.from_uri("//Alice")


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


async def _view(subnet: InMemorySubnet) -> Bittensor11ChainView:
    view = Bittensor11ChainView("test", subnet.netuid, sync_interval_s=0, attempts=1,
                                client_factory=lambda: subnet.client("test"))
    assert await view.sync()
    return view


def _serve_params(ip: str, port: int, netuid: int = 72) -> dict:
    addr = ipaddress.ip_address(ip)
    return {"netuid": netuid, "version": 10, "ip": int(addr), "port": port, "ip_type": addr.version,
            "protocol": 4, "placeholder1": 0, "placeholder2": 0}


async def test_start_announces_every_served_hotkey_with_the_sdk_call() -> None:
    subnet = InMemorySubnet(72, [ALICE.ss58_address, EVE.ss58_address, EVE2.ss58_address])
    view = await _view(subnet)
    settings = Settings(server={"host": "0.0.0.0", "port": 8091, "external_ip": "203.0.113.7",
                                "extra_hotkeys": [{"port": 8092, "hotkey": "hk2", "external_port": 9092}]},
                        chain={"network": "test"})
    ann = build_announcer(view, settings, [(EVE, 8091), (EVE2, 8092)], version=10)
    assert ann is not None
    await ann.start()
    try:
        calls = subnet.serve_axon_calls()
        assert [(c.call.module, c.call.function) for c in calls] == [("SubtensorModule", "serve_axon")] * 2
        assert calls[0].call.params == _serve_params("203.0.113.7", 8091)
        assert calls[1].call.params == _serve_params("203.0.113.7", 9092)  # the extra hotkey's external port
        # each hotkey signs its own ServeAxon (hotkey-signed intent), with a working signature
        assert [c.signer for c in calls] == [EVE.ss58_address, EVE2.ss58_address]
        assert all(c.signature_ok for c in calls)
        # the view read the new axons back through the SDK's metagraph decoding
        me = view.self_info(EVE.ss58_address)
        assert me is not None and (me.uid, me.ip, me.port) == (1, "203.0.113.7", 8091)
        st = ann.status(EVE.ss58_address)
        assert st is not None and st.announced and st.confirmed and st.on_chain == "203.0.113.7:8091"
        assert ann.describe()[EVE2.ss58_address]["address"] == "203.0.113.7:9092"
    finally:
        await ann.stop()
        await view.stop()


async def test_reannounces_when_the_chain_shows_another_address_for_our_uid() -> None:
    subnet = InMemorySubnet(72, [ALICE.ss58_address, EVE.ss58_address])
    subnet.set_axon(EVE.ss58_address, "198.51.100.1", 8091)  # already served at this address
    view = await _view(subnet)
    clock = Clock()
    ann = AxonAnnouncer(view, version=10, check_interval_s=0, min_gap_s=600, clock=clock)
    ann.add(EVE, "198.51.100.1", 8091)
    await ann.start()
    assert subnet.serve_axon_calls() == []  # the chain already shows it: nothing to pay for
    assert ann.status(EVE.ss58_address).confirmed

    subnet.set_axon(EVE.ss58_address, "192.0.2.50", 7000)  # e.g. an old machine announced itself
    await view.sync()
    assert await ann.check_once() == [EVE.ss58_address]
    assert subnet.serve_axon_calls()[-1].call.params == _serve_params("198.51.100.1", 8091)
    assert view.self_info(EVE.ss58_address).ip == "198.51.100.1"

    # another change right away: the serving rate limit gap holds the next announcement back ...
    subnet.set_axon(EVE.ss58_address, "192.0.2.50", 7000)
    await view.sync()
    clock.t += 60
    assert await ann.check_once() == []
    assert ann.status(EVE.ss58_address).on_chain == "192.0.2.50:7000"
    assert not ann.status(EVE.ss58_address).confirmed
    # ... until it has passed
    clock.t += 600
    assert await ann.check_once() == [EVE.ss58_address]
    assert len(subnet.serve_axon_calls()) == 2


async def test_a_new_address_is_announced_at_once_ipv6() -> None:
    subnet = InMemorySubnet(72, [EVE.ss58_address])
    view = await _view(subnet)
    ann = AxonAnnouncer(view, version=10, check_interval_s=0, clock=Clock())
    ann.add(EVE, "203.0.113.7", 8091)
    await ann.check_once()
    ann.set_address(EVE.ss58_address, "2001:db8::7", 8091)
    assert await ann.check_once() == [EVE.ss58_address]
    call = subnet.serve_axon_calls()[-1].call
    assert call.params["ip_type"] == 6 and call.params["ip"] == int(ipaddress.IPv6Address("2001:db8::7"))
    assert ann.status(EVE.ss58_address).on_chain == "[2001:db8::7]:8091"


async def test_chain_refusal_is_reported_and_retried_with_backoff() -> None:
    subnet = InMemorySubnet(72, [EVE.ss58_address])
    subnet.fail_next = ["ServingRateLimitExceeded"]
    view = await _view(subnet)
    clock = Clock()
    ann = AxonAnnouncer(view, version=10, check_interval_s=0, retry_base_s=30, clock=clock)
    ann.add(EVE, "203.0.113.7", 8091)
    await ann.start()  # never raises
    st = ann.status(EVE.ss58_address)
    assert not st.announced and "ServingRateLimitExceeded" in (st.error or "")
    assert st.to_dict()["announced"] is False
    clock.t += 10
    assert await ann.check_once() == []  # inside the backoff
    clock.t += 30
    assert await ann.check_once() == [EVE.ss58_address]
    assert st.announced and st.error is None and len(subnet.serve_axon_calls()) == 2


async def test_unregistered_hotkey_is_not_announced() -> None:
    subnet = InMemorySubnet(72, [ALICE.ss58_address])
    view = await _view(subnet)
    ann = AxonAnnouncer(view, check_interval_s=0, clock=Clock())
    ann.add(EVE, "203.0.113.7", 8091)
    assert await ann.check_once() == []
    assert subnet.submitted == []
    st = ann.status(EVE.ss58_address)
    assert not st.announced and st.error == "hotkey not registered on netuid 72" and st.uid is None


def test_announce_address_rules() -> None:
    assert announce_address("0.0.0.0", 8091, "203.0.113.7") == ("203.0.113.7", 8091)
    assert announce_address("10.1.2.3", 8091) == ("10.1.2.3", 8091)  # the bind address (a warning: private)
    assert announce_address("0.0.0.0", 8091, "[2001:db8::1]", 443) == ("2001:db8::1", 443)
    with pytest.raises(AnnounceConfigError, match=r"set server\.external_ip"):
        announce_address("0.0.0.0", 8091)
    with pytest.raises(AnnounceConfigError, match="not a host name"):
        announce_address("0.0.0.0", 8091, "miner.example.org")
    with pytest.raises(AnnounceConfigError, match="external_port"):
        announce_address("203.0.113.7", 0)


async def test_local_chain_has_nothing_to_announce(tmp_path) -> None:
    from roadminer.chain.local import LocalChainView
    from testkit.miner import write_chain

    view = LocalChainView(str(write_chain(tmp_path / "chain.yaml")), netuid=72)
    assert build_announcer(view, Settings(), [(EVE, 8091)], version=10) is None
    subnet = InMemorySubnet(72, [EVE.ss58_address])
    bt_view = await _view(subnet)
    off = Settings(server={"external_ip": "203.0.113.7"}, chain={"network": "test", "announce": False})
    assert build_announcer(bt_view, off, [(EVE, 8091)], version=10) is None


async def test_chain_view_reads_alpha_stake_from_the_sdk_metagraph() -> None:
    """bittensor 11 reports subnet stake as alpha ``Balance``s (``.tao`` raises): the view still syncs."""
    subnet = InMemorySubnet(72, [ALICE.ss58_address, EVE.ss58_address])
    subnet.stake_rao[ALICE.ss58_address] = 30_000 * 10**9
    view = await _view(subnet)
    assert view.get(ALICE.ss58_address).stake == pytest.approx(30_000.0)
    assert view.get(EVE.ss58_address).stake == 0.0 and view.block == subnet.block
