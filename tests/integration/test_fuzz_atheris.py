"""Coverage-guided fuzzing with atheris (libFuzzer), seeded with the regression corpus; skipped when
atheris is not installed. Each target runs in a subprocess for a bounded number of inputs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

CORPUS = Path(__file__).resolve().parents[1] / "fuzz_corpus"
RUNS = int(20_000 * float(os.environ.get("ROADMINER_FUZZ_SCALE", "1")))


@pytest.mark.parametrize("target", ["decode", "headers"])
def test_atheris_target(target: str, tmp_path: Path) -> None:
    seeds = tmp_path / "corpus"
    seeds.mkdir()
    if target == "decode":
        for f in (CORPUS / "images").glob("*.bin"):
            shutil.copy(f, seeds / f.name)
    proc = subprocess.run(
        [
            sys.executable,
            str(CORPUS / "atheris_targets.py"),
            target,
            f"-runs={RUNS}",
            "-max_total_time=30",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={tmp_path}/",
            str(seeds),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    tail = proc.stderr[-3000:]
    crashes = list(tmp_path.glob("crash-*")) + list(tmp_path.glob("oom-*")) + list(tmp_path.glob("timeout-*"))
    assert proc.returncode == 0 and not crashes, f"atheris found a failing input {crashes}:\n{tail}"
    done = [line for line in proc.stderr.splitlines() if line.startswith("Done ")]
    print(f"\n[fuzz atheris] {target}: {done[-1] if done else tail[-200:]}")
