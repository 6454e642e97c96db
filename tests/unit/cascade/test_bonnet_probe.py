"""``roadminer bonnet-probe``: the shipped cascade on real negatives as they are and with a windshield frame's
bottom strip (bonnet) pasted in; its "as is" half is exactly what ``eval`` says of the same views."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from roadminer.cascade.router import EarlyExitRouter
from roadminer.cli import app
from roadminer.core.config import Settings
from roadminer.core.scoring import to_label
from roadminer.training.data import load_image_folder
from roadminer.training.evaluate import evaluate_router
from testkit.data import tiny_copy


@pytest.fixture(scope="module")
def tiny(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_copy(shared_data, tmp_path_factory.mktemp("tiny"))


def test_bonnet_probe_reports_both_halves_on_the_same_views(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    r = CliRunner().invoke(app, ["bonnet-probe", "--images", str(tiny), "--levels", "0,3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    samples = load_image_folder(tiny)
    negatives = [s for src in sorted({s.source for s in samples} - {"wzcity"})
                 for s in samples if s.source == src and s.label == 0]
    assert rep["n"] == len(negatives) > 0 and rep["donors"] == ["wzcity"] and rep["levels"] == [0, 3]
    res = evaluate_router(EarlyExitRouter.from_config(Settings().cascade), negatives, [0, 3], seed=5,
                          progress=False)
    assert rep["as_is"]["fpr"] == pytest.approx(float(to_label(res["probs"]).mean()), abs=1e-4)
    assert 0 <= rep["turned_by_strip"] <= rep["with_strip"]["fpr"] <= 1
    assert set(rep["with_strip"]["per_source"]) == {s.source for s in negatives}


@pytest.mark.parametrize(
    ("args", "says"),
    [(["--donor", "nosuch"], "no frames of source"), (["--height", "0.9"], "--height"),
     (["--source", "pranav"], "no unseen negatives"), (["--max-per-source", "-1"], "--max-per-source"),
     (["--levels", "0,9"], "level")],
)
def test_bonnet_probe_refuses_what_it_cannot_measure(tiny: Path, args: list[str], says: str) -> None:
    r = CliRunner().invoke(app, ["bonnet-probe", "--images", str(tiny), *args])
    assert r.exit_code == 2 and says in r.output, r.output


def test_bonnet_probe_skips_negatives_of_the_training_copy(tiny: Path) -> None:
    r = CliRunner().invoke(app, ["bonnet-probe", "--images", str(tiny), "--not-in", str(tiny)])
    assert r.exit_code == 2 and "no unseen negatives" in r.output, r.output
