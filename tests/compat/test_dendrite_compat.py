"""A real bittensor 9.12.2 Dendrite (separate venv, subprocess) against roadminer's miner on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bt912_venv import run_bt912

from roadminer.chain.local import LocalChainView
from roadminer.core.config import Settings
from roadminer.imaging.decode import encode_jpeg, to_b64
from roadminer.miner.run import start_miner
from roadminer.protocol import sn72
from roadminer.protocol.keys import HotkeySigner

pytestmark = pytest.mark.compat


def _scene() -> np.ndarray:
    rng = np.random.default_rng(7)
    img = np.full((224, 224, 3), 90, np.uint8)
    img[150:, :] = (70, 70, 75)  # road
    img[120:200, 100:130] = (255, 120, 0)  # an orange cone-ish block
    img += rng.integers(0, 12, img.shape, dtype=np.uint8)
    return img


async def test_real_dendrite_against_miner(bt912_python: Path, tmp_path: Path) -> None:
    miner_key = HotkeySigner.from_uri("//Eve")
    chain_file = LocalChainView.write(
        tmp_path / "chain.yaml",
        [
            {"uid": 0, "uri": "//Alice", "stake": 25000.0, "validator_permit": True},
            {"uid": 1, "uri": "//Eve", "stake": 0.0, "validator_permit": False},
        ],
    )
    settings = Settings(server={"host": "127.0.0.1", "port": 0}, chain={"local_config": str(chain_file)})
    miner = await start_miner(settings, signers=[(0, miner_key)])
    try:
        cfg = {
            "ip": "127.0.0.1",
            "port": miner.ports[0],
            "axon_hotkey": miner_key.ss58_address,
            "image_b64": to_b64(encode_jpeg(_scene())),
            "validator_uri": "//Alice",
            "forger_uri": "//Bob",
        }
        # The subprocess talks to this event loop's server: run it in a thread.
        import asyncio

        proc = await asyncio.to_thread(run_bt912, bt912_python, "dendrite_calls.py", json.dumps(cfg))
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps({k: v for k, v in out.items() if k != "wire_headers"}, indent=1))
    finally:
        await miner.stop()

    assert out["bittensor"] == "9.12.2"
    for key in ("ok", "replay_first", "after", "final"):
        r = out[key]
        assert r["status_code"] == 200, (key, r)
        assert r["is_success"]
        assert 0.0 <= r["prediction"] <= 1.0 and r["prediction"] != 0.5
        assert r["image_len"] == 0  # the miner blanks the image in its answer
    assert len(out["forward_deserialized"]) == 1 and 0.0 <= out["forward_deserialized"][0] <= 1.0
    for key, needle in (("forged", "Signature"), ("replayed", "newer one"), ("stale", "too old")):
        r = out[key]
        assert r["status_code"] == 401, (key, r)
        assert needle in (r["status_message"] or ""), (key, r)
        assert r["prediction"] == -1.0
    assert out["bad_image"]["status_code"] == 400

    # roadminer's client puts the same header set on the wire as the real Dendrite.
    _url, ours, _ = sn72.build_request(
        HotkeySigner.from_uri("//Alice"), miner_key.ss58_address, "127.0.0.1", 1, "x"
    )
    assert set(ours) == set(out["wire_headers"])
    assert out["wire_headers"]["computed_body_hash"] == sn72.EMPTY_BODY_HASH
    assert out["wire_headers"]["bt_header_dendrite_version"] == ours["bt_header_dendrite_version"]
    assert set(out["wire_body_keys"]) == set(sn72.ImageSynapse.model_fields)
