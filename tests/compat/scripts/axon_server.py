"""Runs in the bittensor 9.12 venv: a real ``bittensor.Axon`` serving the reference ``ImageSynapse``.

Usage: python axon_server.py '<json config>'  with keys port, wallet_dir, axon_uri, known_image_sha256,
blacklist (hotkeys refused by the blacklist). Serves on 127.0.0.1 only, without any chain: the axon is
attached and started, never served to a subtensor.

Protocol on stdout: one JSON line ``{"ready": ...}`` once the port accepts connections; then, when stdin
reaches EOF (or reads a line), the axon stops and a last JSON line ``{"received": [...]}`` lists what the
forward function saw, in arrival order.
"""

# No ``from __future__ import annotations``: Axon.attach inspects real annotation objects.
import hashlib
import json
import socket
import sys
import time
from typing import Tuple  # noqa: UP035 - Axon.attach compares against typing.Tuple[bool, str]

import bittensor.utils.networking as networking

# Offline: never look up a public IP (the axon gets an explicit external_ip anyway).
networking.get_external_ip = lambda: "127.0.0.1"

import bittensor as bt  # noqa: E402
from bittensor_wallet import Wallet  # noqa: E402
from reference_synapse import ImageSynapse  # noqa: E402


def _wait_listening(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"axon did not listen on 127.0.0.1:{port} within {timeout_s}s")


def main(cfg: dict) -> None:
    wallet = Wallet(name="axon", hotkey="default", path=cfg["wallet_dir"])
    wallet.create_coldkey_from_uri(cfg["axon_uri"], use_password=False, overwrite=True, suppress=True)
    wallet.create_hotkey_from_uri(cfg["axon_uri"], use_password=False, overwrite=True, suppress=True)
    known = cfg["known_image_sha256"]
    refused = set(cfg.get("blacklist", []))
    received: list[dict] = []

    async def forward(synapse: ImageSynapse) -> ImageSynapse:
        digest = hashlib.sha256(synapse.image.encode()).hexdigest()
        d = synapse.dendrite
        received.append(
            {
                "hotkey": d.hotkey,
                "nonce": d.nonce,
                "uuid": d.uuid,
                "version": d.version,
                "ip": d.ip,
                "timeout": synapse.timeout,
                "testnet_label": synapse.testnet_label,
                "computed_body_hash": synapse.computed_body_hash,
                "image_sha256": digest,
            }
        )
        synapse.prediction = 0.8 if digest == known else 0.3
        synapse.image = ""
        return synapse

    def blacklist(synapse: ImageSynapse) -> Tuple[bool, str]:  # noqa: UP006
        if synapse.dendrite.hotkey in refused:
            return True, "hotkey not allowed here"
        return False, "allowed"

    axon = bt.Axon(
        wallet=wallet,
        ip="127.0.0.1",
        port=int(cfg["port"]),
        external_ip="127.0.0.1",
        external_port=int(cfg["port"]),
    )
    axon.attach(forward_fn=forward, blacklist_fn=blacklist)
    axon.start()
    try:
        _wait_listening(int(cfg["port"]))
        ready = {
            "ready": True,
            "bittensor": bt.__version__,
            "hotkey": wallet.hotkey.ss58_address,
            "port": int(cfg["port"]),
        }
        print(json.dumps(ready), flush=True)
        sys.stdin.readline()  # blocks until the test says stop (or closes stdin)
    finally:
        axon.stop()
    print(json.dumps({"received": received}), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
