"""Dashboard rendering details: the model timeline and the Prometheus gauges fed from history."""

from __future__ import annotations

import re

from roadminer.core.config import StateConfig
from roadminer.core.metrics import render
from roadminer.dashboard.charts import timeline_chart
from roadminer.dashboard.data import refresh_reward_gauges
from roadminer.state.layer import StateLayer


def test_timeline_merges_restarts_and_fits_labels() -> None:
    long = "classifier:final-20261126221538+colour:colour-2"
    events = [
        {"t": 100.0, "version": long, "event": "loaded"},
        {"t": 200.0, "version": long, "event": "loaded"},  # restart, same version
        {"t": 990.0, "version": "v2", "event": "promoted"},
    ]
    svg = timeline_chart("models", "Model versions", events, (0.0, 1000.0))
    bands = re.findall(r'<rect class="band"[^>]*data-version="([^"]+)"', svg)
    assert bands == [long, "v2"]  # one band per version, the restart continues the first
    assert len(re.findall(r'class="mark ', svg)) == 3  # every event keeps its marker
    labels = re.findall(r'<text class="bandlab"[^>]*>([^<]*)</text>', svg)
    assert labels and labels[0] == long  # wide band: full label
    narrow = timeline_chart("models", "m", [{"t": 0.0, "version": "a", "event": "loaded"},
                                            {"t": 995.0, "version": long, "event": "promoted"}], (0.0, 1000.0))
    assert long not in re.findall(r'<text class="bandlab"[^>]*>([^<]*)</text>', narrow)  # never spills over


async def test_reward_gauges_follow_history() -> None:
    state = StateLayer.from_config(StateConfig(backend="memory"))
    try:
        for i in range(12):
            await state.rewards.record_outcome("5Fvalidatorhk", 0.9 if i % 2 else 0.1, i % 2)
        from roadminer.core.metrics import MCC

        MCC.labels(validator="5Fvalidatorhk").set(-1.0)  # as if another process had recorded the outcomes
        await refresh_reward_gauges(state)
        text = render().decode() if isinstance(render(), bytes) else render()
        assert 'roadminer_mcc{validator="5Fvalidatorhk"} 1.0' in text
        assert 'roadminer_accuracy{validator="all"} 1.0' in text
    finally:
        await state.close()
