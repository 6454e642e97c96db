"""roadminer's validator client against a real bittensor 9.12.2 ``Axon`` (separate venv, loopback only).

The axon runs ``tests/compat/scripts/axon_server.py`` in the cached 9.12 venv; its own ``default_verify``
checks our signatures and nonces, and its blacklist refuses one hotkey.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from bt912_venv import SCRIPTS

from roadminer.imaging.decode import encode_jpeg, to_b64
from roadminer.protocol import sn72
from roadminer.protocol.keys import HotkeySigner
from roadminer.validator.client import MinerClient, MinerTarget

pytestmark = pytest.mark.compat

AXON_URI = "//Eve"
VALIDATOR_URI = "//Alice"
REFUSED_URI = "//Bob"


def _scene(seed: int, cone: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((224, 224, 3), 90, np.uint8)
    img[150:, :] = (70, 70, 75)
    if cone:
        img[120:200, 100:130] = (255, 120, 0)
    img += rng.integers(0, 12, img.shape, dtype=np.uint8)
    return img


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RealAxon:
    """The 9.12 axon subprocess: ``start()`` waits for its ready line, ``stop()`` returns what it received."""

    def __init__(self, python: Path, cfg: dict, log: Path) -> None:
        self.python, self.cfg, self.log = python, cfg, log
        self.proc: asyncio.subprocess.Process | None = None
        self.ready: dict = {}

    async def start(self, timeout_s: float = 60.0) -> dict:
        with self.log.open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                str(self.python),
                str(SCRIPTS / "axon_server.py"),
                json.dumps(self.cfg),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
            if not line:
                await self.proc.wait()
                pytest.fail(f"axon exited ({self.proc.returncode}): {self.log.read_text()[-3000:]}")
            if line.startswith(b"{"):
                self.ready = json.loads(line)
                return self.ready

    async def stop(self, timeout_s: float = 30.0) -> list[dict]:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"stop\n")
        await self.proc.stdin.drain()
        self.proc.stdin.close()
        out, _ = await asyncio.wait_for(self.proc.communicate(), timeout_s)
        lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
        assert lines, self.log.read_text()[-3000:]
        return list(json.loads(lines[-1])["received"])

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def _raw_sn72(url: str, headers: dict[str, str], body: dict) -> tuple[float | None, int, str]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as r,
    ):
        return sn72.parse_response(r.status, r.headers, await r.read())


async def test_client_against_real_axon(bt912_python: Path, tmp_path: Path) -> None:
    validator = HotkeySigner.from_uri(VALIDATOR_URI)
    refused = HotkeySigner.from_uri(REFUSED_URI)
    known_b64 = to_b64(encode_jpeg(_scene(7, cone=True)))
    other_b64 = to_b64(encode_jpeg(_scene(8, cone=False)))
    port = _free_port()
    axon = RealAxon(
        bt912_python,
        {
            "port": port,
            "wallet_dir": str(tmp_path / "wallets"),
            "axon_uri": AXON_URI,
            "known_image_sha256": hashlib.sha256(known_b64.encode()).hexdigest(),
            "blacklist": [refused.ss58_address],
        },
        tmp_path / "axon.log",
    )
    try:
        ready = await axon.start()
        assert ready["bittensor"] == "9.12.2"
        axon_hotkey = HotkeySigner.from_uri(AXON_URI).ss58_address
        assert ready["hotkey"] == axon_hotkey
        target = MinerTarget(uid=1, hotkey=axon_hotkey, ip="127.0.0.1", port=port)

        # One client, several sequential queries: one uuid, strictly increasing nonces, all accepted.
        async with MinerClient(validator, timeout_s=9.0) as client:
            answers = [await client.query(target, known_b64) for _ in range(5)]
            other = await client.query(target, other_b64)
            client_uuid = client.uuid
        for r in answers:
            assert (r.ok, r.status, r.error) == (True, 200, None), r
            assert r.prediction == pytest.approx(0.8)
        assert (other.ok, other.status, other.prediction) == (True, 200, pytest.approx(0.3)), other

        # The axon's blacklist refuses this hotkey: a clear 403, no exception.
        async with MinerClient(refused, timeout_s=9.0) as bob:
            denied = await bob.query(target, known_b64)
        assert (denied.ok, denied.prediction, denied.status, denied.error) == (False, None, 403, "http_403")
        assert "blacklisted" in denied.message.lower(), denied

        # Signed for another axon hotkey: the real verify rejects the signature.
        async with MinerClient(validator, timeout_s=9.0) as client:
            wrong = await client.query(
                MinerTarget(uid=1, hotkey=refused.ss58_address, ip="127.0.0.1", port=port), known_b64
            )
        assert (wrong.ok, wrong.status, wrong.error) == (False, 401, "http_401"), wrong
        assert "signature" in wrong.message.lower(), wrong

        # The protocol layer's nonce handling matches the real axon: a replay and a stale nonce are refused.
        url, headers, body = sn72.build_request(validator, axon_hotkey, "127.0.0.1", port, known_b64, 9.0)
        first = await _raw_sn72(url, headers, body)
        replay = await _raw_sn72(url, headers, body)
        stale_nonce = int(headers["bt_header_dendrite_nonce"]) - 60 * 1_000_000_000
        stale = await _raw_sn72(
            *sn72.build_request(validator, axon_hotkey, "127.0.0.1", port, known_b64, 9.0, nonce=stale_nonce)
        )
        assert first[:2] == (pytest.approx(0.8), 200)
        assert replay[0] is None and replay[1] == 401 and "newer one" in replay[2], replay
        assert stale[0] is None and stale[1] == 401 and "too old" in stale[2].lower(), stale

        received = await axon.stop()
    finally:
        await axon.kill()
    print(json.dumps(received[:2], indent=1))

    # What the real axon's forward saw: only the accepted requests, exactly as sent.
    ours = [r for r in received if r["uuid"] == client_uuid]
    assert len(ours) == 6
    assert all(r["hotkey"] == validator.ss58_address for r in ours)
    nonces = [int(r["nonce"]) for r in ours]
    assert nonces == sorted(nonces) and len(set(nonces)) == len(nonces)
    assert [r["image_sha256"] for r in ours] == [hashlib.sha256(known_b64.encode()).hexdigest()] * 5 + [
        hashlib.sha256(other_b64.encode()).hexdigest()
    ]
    for r in ours:
        assert r["version"] == sn72.version_as_int(sn72.REFERENCE_VERSION)
        # As from a real Dendrite: the body hash travels in the signed header, the JSON field stays empty.
        assert r["computed_body_hash"] == ""
        assert r["timeout"] == pytest.approx(9.0)
        assert r["testnet_label"] == -1
    assert len(received) == 7  # + the raw first request; refused, forged, replayed and stale never reached it
    assert all(r["hotkey"] != refused.ss58_address for r in received)
