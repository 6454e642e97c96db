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
        "cascade.card.json has no regression_sample (a fresh `cascade-stack --report` writes none): measure the "
        "shipped cascade on training.evaluate.regression_sample and record it (docs/model_card.md, Regression guard)"
    )
    card = report["regression_sample"]
    sample = regression_sample(load_image_folder(shared_data), card["per_cell"])
    assert len(sample) == card["n"], "the regression sample changed: re-measure it (docs/model_card.md)"
    router = EarlyExitRouter.from_config(Settings().cascade)
    res = evaluate_router(router, sample, levels=(0, 1, 2, 3), seed=card["seed"], progress=False)
    assert res["mcc"] >= card["mcc"] - MARGIN, (res["mcc"], card)
    assert res["accuracy"] >= card["accuracy"] - MARGIN, (res["accuracy"], card)
