"""Serving SN72 does not import the bittensor SDK (about 0.8 s and a large module tree): the wallet's
hotkey is read through ``bittensor_core``, and ``bittensor.http_auth`` loads on the first btauth/1 request.

Checked in a fresh interpreter (this test process has long imported the SDK): a miner started from a
wallet on disk answers a signed SN72 request with ``bittensor`` absent from ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from testkit.miner import write_chain

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    import aiohttp

    async def main(wallet_dir, chain_file):
        from roadminer.core.config import Settings
        from roadminer.miner.run import start_miner

        settings = Settings(
            wallet={"path": wallet_dir, "name": "miner", "hotkey": "hot", "create_if_missing": False},
            server={"host": "127.0.0.1", "port": 0},
            chain={"network": "local", "local_config": chain_file},
            cascade={"tiers": [{"name": "colour", "kind": "colour"}], "consensus_file": None},
            dashboard={"on_miner": False},
        )
        miner = await start_miner(settings)
        out = {"after_start": "bittensor" in sys.modules, "hotkey": miner.hotkeys[0]}
        from roadminer.protocol import sn72
        from roadminer.protocol.keys import HotkeySigner
        from testkit.miner import jpeg_b64

        alice = HotkeySigner.from_uri("//Alice")
        async with aiohttp.ClientSession() as session:
            url, headers, body = sn72.build_request(alice, miner.hotkeys[0], "127.0.0.1", miner.ports[0],
                                                    jpeg_b64())
            async with session.post(url, headers=headers, json=body) as r:
                out["sn72_status"] = r.status
                out["sn72_prediction"] = (await r.json())["prediction"]
            out["after_sn72"] = "bittensor" in sys.modules
            from roadminer.protocol import btauth

            url, headers, raw = btauth.build_request(alice, miner.hotkeys[0], "127.0.0.1", miner.ports[0],
                                                     jpeg_b64())
            async with session.post(url, headers=headers, data=raw) as r:
                out["btauth_status"] = r.status
        await miner.stop()
        print("RESULT " + json.dumps(out))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_sn72_miner_runs_without_importing_bittensor(tmp_path: Path) -> None:
    from bittensor.wallet import Wallet  # this process only: make the wallet the miner reads

    wallet = Wallet(name="miner", hotkey="hot", path=str(tmp_path / "wallets"))
    wallet.create_new_hotkey(use_password=False, overwrite=False, suppress=True, on_mnemonic=lambda _m: None)
    chain = write_chain(tmp_path / "chain.yaml")
    script = tmp_path / "serve.py"
    script.write_text(SCRIPT)
    env_path = [str(Path(__file__).parents[1]), *sys.path]
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "wallets"), str(chain)],
        capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": ":".join(p for p in env_path if p), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, proc.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    assert out["hotkey"] == wallet.hotkey.ss58_address  # the wallet's own hotkey, read without the SDK
    assert out["after_start"] is False
    assert out["sn72_status"] == 200 and 0.0 < out["sn72_prediction"] < 1.0
    assert out["after_sn72"] is False
    assert out["btauth_status"] == 200  # btauth/1 still works: the SDK loads on its first request
