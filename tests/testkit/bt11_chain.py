"""An in-memory subnet behind bittensor 11's own ``Client``.

``bittensor.Client(network, substrate=...)`` takes any implementation of the SDK's ``Substrate``
protocol ("e.g. an in-memory fake for tests", in the SDK's words). Everything above that seam is the
real SDK: intents build their calls (``bittensor._generated.calls``), the executor plans, picks the
signer and submits, and ``bittensor.metagraph.fetch`` decodes the subnet. This substrate keeps one
subnet's hotkeys and axons, answers the metagraph runtime call from them, and records every submitted
call with the address that signed it. A submitted ``serve_axon`` updates the stored axon, the way the
chain's pallet does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Submitted:
    call: Any  # bittensor._generated.calls.Call (module, function, params)
    signer: str  # ss58 address of the key the executor handed to submit
    signature_ok: bool  # the signer really signs (its signature over a probe verifies)


@dataclass
class InMemorySubnet:
    netuid: int
    hotkeys: list[str]
    block: int = 1000
    axons: dict[str, dict[str, int]] = field(default_factory=dict)
    submitted: list[Submitted] = field(default_factory=list)
    fail_next: list[str] = field(default_factory=list)  # chain errors for the next submits
    metagraph_reads: int = 0
    stake_rao: dict[str, int] = field(default_factory=dict)  # total (alpha) stake per hotkey

    def set_axon(self, hotkey: str, ip: str, port: int) -> None:
        import ipaddress

        addr = ipaddress.ip_address(ip)
        self.axons[hotkey] = {"ip": int(addr), "port": port, "ip_type": addr.version, "protocol": 4, "version": 1}

    def serve_axon_calls(self) -> list[Submitted]:
        return [s for s in self.submitted if (s.call.module, s.call.function) == ("SubtensorModule", "serve_axon")]

    def client(self, network: str = "test") -> Any:
        import bittensor as bt

        return bt.Client(network, substrate=self)

    # -- the Substrate protocol, as far as the reads and writes used here need it -------------------
    async def connect(self) -> InMemorySubnet:
        return self

    async def close(self) -> None:
        return None

    async def block_number(self) -> int:
        return self.block

    async def block_hash(self, block: int | None = None) -> str:
        return "0x%064x" % (block or self.block)

    async def query_map(self, module: str, storage_function: str, params: Any = None, block_hash: Any = None) -> list:
        return []

    async def runtime_call(self, api: str, method: str, params: list, block_hash: Any = None) -> Any:
        if (api, method) != ("SubnetInfoRuntimeApi", "get_metagraph") or params != [self.netuid]:
            raise NotImplementedError(f"{api}.{method}({params}) is not served by the in-memory subnet")
        self.metagraph_reads += 1
        n = len(self.hotkeys)
        empty = {"ip": 0, "port": 0, "ip_type": 4, "protocol": 0, "version": 0}
        return {
            "netuid": self.netuid, "block": self.block, "tempo": 360, "last_step": 0, "blocks_since_last_step": 1,
            "owner_hotkey": self.hotkeys[0], "owner_coldkey": self.hotkeys[0], "network_registered_at": 1,
            "num_uids": n, "max_uids": 256, "hotkeys": list(self.hotkeys), "coldkeys": list(self.hotkeys),
            "axons": [self.axons.get(h, empty) for h in self.hotkeys], "active": [True] * n,
            "validator_permit": [False] * n, "total_stake": [self.stake_rao.get(h, 0) for h in self.hotkeys],
        }

    async def compose(self, call: Any) -> Any:
        return call  # the generated Call itself: what an RPC substrate would SCALE-encode

    async def estimate_fee(self, call: Any, keypair: Any) -> Any:
        import bittensor as bt

        return bt.Balance.from_rao(0)

    async def block_time(self) -> float:
        return 12.0

    async def submit(self, call: Any, keypair: Any, **_: Any) -> Any:
        from bittensor.result import ChainError, ExtrinsicResult

        from roadminer.protocol.keys import verify_signature

        probe = b"in-memory-subnet-probe"
        ok = verify_signature(probe, keypair.sign(probe), keypair.ss58_address)
        self.submitted.append(Submitted(call, str(keypair.ss58_address), ok))
        self.block += 1
        if self.fail_next:
            err = self.fail_next.pop(0)
            return ExtrinsicResult(success=False, message=err, error=ChainError(err))
        if (call.module, call.function) == ("SubtensorModule", "serve_axon"):
            hotkey = str(keypair.ss58_address)
            if hotkey not in self.hotkeys:
                return ExtrinsicResult(success=False, message="NotRegistered", error=ChainError("NotRegistered"))
            p = call.params
            self.axons[hotkey] = {"ip": p["ip"], "port": p["port"], "ip_type": p["ip_type"],
                                  "protocol": p["protocol"], "version": p["version"]}
        return ExtrinsicResult(success=True, message="in block", block_hash=await self.block_hash())
