"""The shipped default cascade on a fixed sample of real shared photos, at the validators' levels 0-3: its MCC
must not fall below the figure its card records minus a margin (a retrained or re-fitted model that loses
accuracy fails here before it ships)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from roadminer.cascade.router import EarlyExitRouter
from roadminer.core.config import Settings
from roadminer.training.data import load_image_folder
from roadminer.training.evaluate import evaluate_router, regression_sample

CARD = Path(__file__).resolve().parents[2] / "src/roadminer/assets/models/cascade.card.json"
MARGIN = 0.05


@pytest.mark.slow
def test_shipped_cascade_keeps_its_card_mcc_on_real_photos(shared_data: Path) -> None:
    report = json.loads(CARD.read_text())
    assert "regression_sample" in report, (
        "cascade.card.json has no regression_sample (a fresh `cascade-stack --report` writes none): record it with "
        "`roadminer eval --images DATA --regression-sample 6 --record CARD` (docs/model_card.md, Regression guard)"
    )
    card = report["regression_sample"]
    sample = regression_sample(load_image_folder(shared_data), card["per_cell"])
    assert len(sample) == card["n"], "the regression sample changed: re-measure it (docs/model_card.md)"
    router = EarlyExitRouter.from_config(Settings().cascade)
    res = evaluate_router(router, sample, levels=(0, 1, 2, 3), seed=card["seed"], progress=False)
    assert res["mcc"] >= card["mcc"] - MARGIN, (res["mcc"], card)
    assert res["accuracy"] >= card["accuracy"] - MARGIN, (res["accuracy"], card)


@pytest.mark.slow
def test_eval_records_the_regression_figure_it_prints(shared_data: Path, tmp_path: Path) -> None:
    """The command the card names re-measures the guard's figure and writes it where the test above reads it."""
    from typer.testing import CliRunner

    from roadminer.cli import app

    card = tmp_path / "card.json"
    card.write_text(json.dumps({"tiers": ["classifier", "classifier2"]}))
    args = ["eval", "--images", str(shared_data), "--regression-sample", "1", "--levels", "0,3"]
    r = CliRunner().invoke(app, [*args, "--record", str(card)])
    assert r.exit_code == 0, r.output
    printed = json.loads(r.output.strip().splitlines()[-1])
    saved = json.loads(card.read_text())
    assert saved["tiers"] == ["classifier", "classifier2"]  # the rest of the card is kept
    rec = saved["regression_sample"]
    assert rec["mcc"] == printed["mcc"] and rec["accuracy"] == printed["accuracy"]
    assert rec["n"] == len(regression_sample(load_image_folder(shared_data), 1)) and rec["levels"] == [0, 3]
    r = CliRunner().invoke(app, ["eval", "--images", str(shared_data), "--record", str(card)])
    assert r.exit_code == 2 and "--regression-sample" in r.output
    r = CliRunner().invoke(app, [*args, "--limit", "3", "--record", str(card)])
    assert r.exit_code == 2 and "--limit" in r.output
    assert json.loads(card.read_text())["regression_sample"] == rec  # a refused call leaves the card alone


@pytest.mark.slow
def test_shipped_cascade_does_not_answer_road_work_for_a_windshield_bonnet(shared_data: Path) -> None:
    """The bonnet probe (docs/model_card.md): fixed negatives of every other source with the bottom 12% of a
    `wzcity` windshield frame pasted in. The models trained without bonnet-strip negatives turned 0.167 of these
    rows into road work (0.221 of unseen photos); the shipped ones 0.033."""
    from roadminer.training.evaluate import strip_probe

    samples = load_image_folder(shared_data)
    negatives = [s for s in regression_sample(samples, 12) if s.label == 0 and s.source != "wzcity"]
    donors = [s for s in samples if s.source == "wzcity"]
    router = EarlyExitRouter.from_config(Settings().cascade)
    res = strip_probe(router, negatives, donors, height=0.12, levels=(0, 3), seed=5)
    assert res["n"] == 60
    assert res["turned_by_strip"] <= 0.10, res
    assert res["with_strip"]["fpr"] <= res["as_is"]["fpr"] + 0.10, res
