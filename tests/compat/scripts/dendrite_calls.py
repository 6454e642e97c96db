"""Runs in the bittensor 9.12 venv: a real ``bittensor.Dendrite`` queries a miner's ImageSynapse.

Usage: python dendrite_calls.py '<json config>'  with keys ip, port, axon_hotkey, image_b64,
validator_uri, forger_uri. Prints one JSON object: the outcome of each scenario.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import bittensor.utils.networking as networking

# Dendrite() looks up the public IP at construction; offline, use a documentation address (not the
# axon's, which would make the Dendrite rewrite the URL to 0.0.0.0).
networking.get_external_ip = lambda: "192.0.2.1"

import bittensor as bt  # noqa: E402
from bittensor.core.chain_data import AxonInfo  # noqa: E402
from bittensor.core.settings import version_as_int  # noqa: E402
from bittensor.core.synapse import TerminalInfo  # noqa: E402
from bittensor_wallet import Keypair  # noqa: E402
from reference_synapse import ImageSynapse  # noqa: E402


class FixedNonceDendrite(bt.Dendrite):
    """Signs honestly but with a chosen nonce (to replay or to send a stale one)."""

    nonce: int = 0

    def preprocess_synapse_for_request(self, target_axon_info, synapse, timeout=12.0):
        synapse = super().preprocess_synapse_for_request(target_axon_info, synapse, timeout)
        synapse.dendrite.nonce = self.nonce
        message = (
            f"{synapse.dendrite.nonce}.{synapse.dendrite.hotkey}.{synapse.axon.hotkey}."
            f"{synapse.dendrite.uuid}.{synapse.body_hash}"
        )
        synapse.dendrite.signature = f"0x{self.keypair.sign(message).hex()}"
        return synapse


class ForgingDendrite(bt.Dendrite):
    """Claims the validator's hotkey but signs with another key."""

    claimed: str = ""
    forger: Keypair | None = None

    def preprocess_synapse_for_request(self, target_axon_info, synapse, timeout=12.0):
        synapse = super().preprocess_synapse_for_request(target_axon_info, synapse, timeout)
        synapse.dendrite = TerminalInfo(
            ip=self.external_ip,
            version=version_as_int,
            nonce=time.time_ns(),
            uuid=self.uuid,
            hotkey=self.claimed,
        )
        message = (
            f"{synapse.dendrite.nonce}.{synapse.dendrite.hotkey}.{synapse.axon.hotkey}."
            f"{synapse.dendrite.uuid}.{synapse.body_hash}"
        )
        synapse.dendrite.signature = f"0x{self.forger.sign(message).hex()}"
        return synapse


def outcome(s: ImageSynapse) -> dict:
    return {
        "status_code": s.dendrite.status_code,
        "status_message": s.dendrite.status_message,
        "prediction": s.prediction,
        "is_success": s.is_success,
        "image_len": len(s.image),
    }


async def main(cfg: dict) -> dict:
    validator = Keypair.create_from_uri(cfg["validator_uri"])
    forger = Keypair.create_from_uri(cfg["forger_uri"])
    axon = AxonInfo(
        version=version_as_int,
        ip=cfg["ip"],
        port=int(cfg["port"]),
        ip_type=4,
        hotkey=cfg["axon_hotkey"],
        coldkey=cfg["axon_hotkey"],
    )
    image = cfg["image_b64"]
    out: dict = {"bittensor": bt.__version__}

    dendrite = bt.Dendrite(wallet=validator)
    # What a Dendrite puts on the wire (for comparison with roadminer's client).
    probe = dendrite.preprocess_synapse_for_request(axon, ImageSynapse(image=image), 9.0)
    out["wire_headers"] = probe.to_headers()
    out["wire_body_keys"] = sorted(probe.model_dump().keys())

    # The validator's call: forward to a list of axons, deserialized -> list of floats.
    preds = await dendrite.forward(
        axons=[axon], synapse=ImageSynapse(image=image), timeout=9.0, deserialize=True
    )
    out["forward_deserialized"] = preds
    res = await dendrite.call(axon, ImageSynapse(image=image), timeout=9.0, deserialize=False)
    out["ok"] = outcome(res)

    forging = ForgingDendrite(wallet=forger)
    forging.claimed, forging.forger = validator.ss58_address, forger
    out["forged"] = outcome(
        await forging.call(axon, ImageSynapse(image=image), timeout=9.0, deserialize=False)
    )

    replayer = FixedNonceDendrite(wallet=validator)
    replayer.nonce = time.time_ns()
    out["replay_first"] = outcome(
        await replayer.call(axon, ImageSynapse(image=image), timeout=9.0, deserialize=False)
    )
    out["replayed"] = outcome(
        await replayer.call(axon, ImageSynapse(image=image), timeout=9.0, deserialize=False)
    )

    stale = FixedNonceDendrite(wallet=validator)
    stale.nonce = time.time_ns() - 60 * 1_000_000_000
    out["stale"] = outcome(await stale.call(axon, ImageSynapse(image=image), timeout=9.0, deserialize=False))

    out["after"] = outcome(
        await dendrite.call(axon, ImageSynapse(image=image), timeout=9.0, deserialize=False)
    )
    bad = ImageSynapse(image="bm90IGFuIGltYWdl")  # base64 of "not an image"
    out["bad_image"] = outcome(await dendrite.call(axon, bad, timeout=9.0, deserialize=False))
    out["final"] = outcome(
        await dendrite.call(axon, ImageSynapse(image=image), timeout=9.0, deserialize=False)
    )
    for d in (dendrite, forging, replayer, stale):
        await d.aclose_session()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1]))), default=str))
