"""Builds (once, cached) a virtualenv holding the reference bittensor 9.12 SDK.

The cache lives under ``~/.cache/roadminer/bt912-venv-<key>`` where the key hashes the pinned
versions, so CI reuses it between runs. Run this file directly to build it ahead of the tests.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

BT_VERSION = "9.12.2"
# bittensor 9.12 resolves a newer async-substrate-interface that conflicts with scalecodec; these
# two pins make the reference SDK importable.
PINS = (
    [f"bittensor=={BT_VERSION}"],
    ["async-substrate-interface<1.6"],
    ["--force-reinstall", "--no-deps", "scalecodec==1.2.12"],
)
CHECK = (
    "import bittensor, sys; print(bittensor.__version__); sys.exit(0 if bittensor.__version__ == '%s' else 1)"
)


def venv_dir() -> Path:
    key = hashlib.sha256(repr((BT_VERSION, PINS, sys.version_info[:2])).encode()).hexdigest()[:12]
    root = Path(os.environ.get("ROADMINER_BT912_VENV_ROOT", Path.home() / ".cache" / "roadminer"))
    return root / f"bt912-venv-{key}"


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_bt912_venv(log: bool = True) -> Path:
    """Returns the python of a venv with bittensor==9.12.2; builds it when missing. Raises on failure."""
    venv = venv_dir()
    py = _python(venv)
    if (venv / ".complete").is_file() and py.exists():
        return py
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    tmp = venv.with_name(venv.name + ".building")
    if tmp.exists():
        shutil.rmtree(tmp)
    out = None if log else subprocess.DEVNULL
    subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, stdout=out)
    pip = [str(_python(tmp)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for args in PINS:
        subprocess.run([*pip, *args], check=True, stdout=out)
    subprocess.run([str(_python(tmp)), "-c", CHECK % BT_VERSION], check=True, stdout=out)
    # venvs embed their path in scripts; python itself works after a rename since we call it directly.
    tmp.rename(venv)
    (venv / ".complete").write_text(BT_VERSION)
    return py


if __name__ == "__main__":
    print(ensure_bt912_venv())


SCRIPTS = Path(__file__).resolve().parent / "scripts"


def run_bt912(
    python: Path, script: str, *args: str, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run ``tests/compat/scripts/<script>`` with the 9.12 python; stdout is the script's JSON."""
    return subprocess.run(
        [str(python), str(SCRIPTS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
