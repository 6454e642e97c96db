"""Where the shared research photos are (read in place, never copied into the repository)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("ROADMINER_SHARED_DATA", REPO.parent / "shared" / "data" / "roadwork-v1"))


def have_shared_data() -> bool:
    return (SHARED_DATA / "manifest.csv").is_file()
