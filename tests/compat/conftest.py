"""Fixtures for compatibility tests against the reference bittensor 9.12 SDK (separate venv)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bt912_venv import ensure_bt912_venv


@pytest.fixture(scope="session")
def bt912_python() -> Path:
    """Path to the python of a venv holding bittensor==9.12.2 (built once and cached).

    The install comes from PyPI; a failure fails the tests loudly (it is not a reason to skip).
    """
    try:
        return ensure_bt912_venv(log=False)
    except (subprocess.CalledProcessError, OSError) as e:
        pytest.fail(f"could not build the bittensor 9.12.2 venv: {e}")
