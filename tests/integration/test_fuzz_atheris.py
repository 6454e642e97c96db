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


def _rss_limit_mb(budget: int = 2048) -> int:
    """2 GiB above this process's peak: on Linux ``ru_maxrss`` survives fork + exec, so libFuzzer's child starts
    out reporting the peak of the pytest process that spawned it (a long suite that loaded models passes 2 GiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 + budget


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
            f"-rss_limit_mb={_rss_limit_mb()}",
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
