"""The teacher labels the queue where it is confident and never over a human; provenance weights reach
the training sampler."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from roadminer.core.config import load_settings
from roadminer.imaging.decode import encode_jpeg
from roadminer.lifecycle.teacher import QueueTeacher, TeacherVotes, decide, teach_queue
from roadminer.state.backends.memory import MemoryStore
from roadminer.state.queue import HardExampleQueue
from testkit.miner import scene

STRONG = {"coef": [1.2, 0.2, 0.8, 0.3, 0.8], "intercept": -2.5, "version": "colour-strong"}
INVERTED = {"coef": [-1.2, -0.2, -0.8, -0.3, -0.8], "intercept": 2.5, "version": "colour-inverted"}


def _settings(tmp_path: Path, **learning: object):  # type: ignore[no-untyped-def]
    for name, spec in (("strong", STRONG), ("inverted", INVERTED)):
        (tmp_path / f"{name}.json").write_text(json.dumps(spec))
    over = {
        "cascade.tiers": [
            {"name": "colour", "kind": "colour", "options": {"coefs_path": str(tmp_path / "strong.json")}}
        ],
        "learning.models_dir": str(tmp_path / "models"),
        "learning.pseudo_margin": 0.2,
    }
    over.update({f"learning.{k}": v for k, v in learning.items()})
    return load_settings(None, over)


async def _queue(n: int) -> tuple[HardExampleQueue, list[str]]:
    q = HardExampleQueue(MemoryStore())
    hs = []
    for i in range(n):
        img = encode_jpeg(scene(i, cone=bool(i % 2)))  # odd: an orange cone
        await q.enqueue(img, ["low_margin"], 0.5, "colour")
        hs.append(hashlib.sha256(img).hexdigest())
    return q, hs


async def test_cascade_teacher_labels_confident_items_and_leaves_humans_alone(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert settings.learning.teacher_tier == "cascade"  # the default: the full cascade teaches
    q, hs = await _queue(8)
    await q.labels.set(hs[1], "no_roadwork", "human", "ana")  # a human disagrees with the teacher
    await q.set_label(hs[2], 1, who="5Sim")  # and the simulator knows another one
    rep = await teach_queue(settings, q)
    assert rep.teacher.startswith("cascade[") and "colour-strong" in rep.teacher
    assert rep.considered == 6 and rep.kept_other_provenance == 2
    assert rep.labelled == {"roadwork": 3, "no_roadwork": 3} and rep.unsure == 0
    for i, h in enumerate(hs):
        lab = await q.labels.get(h)
        assert lab is not None
        if i == 1:
            assert (lab.provenance, lab.value) == ("human", "no_roadwork")
        elif i == 2:
            assert (lab.provenance, lab.value) == ("simulator", "roadwork")
        else:
            assert lab.provenance == "teacher" and lab.target == i % 2 and lab.who == rep.teacher
            assert lab.prob is not None and abs(lab.prob - 0.5) >= 0.2
    # A second run changes nothing (same teacher, same answers: idempotent).
    events = {h: len(await q.labels.events(h)) for h in hs}
    await teach_queue(settings, q)
    assert {h: len(await q.labels.events(h)) for h in hs} == events
    # A human label given after the teacher's overrides it.
    await q.labels.set(hs[3], "no_roadwork", "human", "bo")
    assert (await q.label_of((await q.entries())[3])) == 0


async def test_extra_teacher_tier_must_agree(tmp_path: Path) -> None:
    inverted = {"name": "judge", "kind": "colour", "weight": 0.2,
                "options": {"coefs_path": str(tmp_path / "inverted.json")}}
    settings = _settings(tmp_path, teacher_tiers=[inverted])
    q, _ = await _queue(4)
    rep = await teach_queue(settings, q)
    # The pooled answer is still confident (the judge weighs 0.2) but the judge disagrees: no labels.
    assert rep.considered == 4 and rep.unsure == 4 and rep.total == 0 and "judge:colour-inverted" in rep.teacher
    settings.learning.teacher_agreement = False
    rep = await teach_queue(settings, q)
    # Without the agreement rule the pooled log-odds decide: the judge pulls the cone images (0.74 alone)
    # under the margin; the plain streets stay confident.
    assert rep.labelled == {"roadwork": 0, "no_roadwork": 2} and rep.unsure == 2


async def test_single_tier_teacher_and_no_teacher(tmp_path: Path) -> None:
    settings = _settings(tmp_path, teacher_tier="colour")
    teacher = QueueTeacher(settings)
    assert teacher.version.startswith("colour[")
    votes = teacher.votes([encode_jpeg(scene(1, cone=True)), encode_jpeg(scene(2, cone=False))])
    assert votes.prob[0] > 0.7 > 0.1 > votes.prob[1]
    with pytest.raises(ValueError, match="not in the cascade"):
        QueueTeacher(settings, mode="nope")
    settings.learning.teacher_tier = None  # null in YAML: nobody teaches
    with pytest.raises(ValueError, match="no teacher"):
        QueueTeacher(settings)


def test_decide_needs_margin_and_agreement() -> None:
    nan = float("nan")
    votes = TeacherVotes(
        prob=np.array([0.9, 0.6, 0.1, 0.85, nan]),
        voters={"cascade": np.array([0.9, 0.6, 0.1, 0.9, nan]), "vlm": np.array([0.8, 0.6, nan, 0.3, nan])},
    )
    assert decide(votes, 0.3) == [1, None, 0, None, None]  # a missing vote abstains; a contrary one blocks
    assert decide(votes, 0.3, agreement=False) == [1, None, 0, 1, None]


def test_provenance_weights_scale_the_sampler(tmp_path: Path) -> None:
    from roadminer.training.data import DatasetError, balanced_weights, load_image_folder

    root = tmp_path / "export"
    rows = []
    for i, (sub, prov, w) in enumerate(
        [("roadwork", "human", 1.0), ("roadwork", "teacher", 0.5), ("no_roadwork", "human", 1.0),
         ("no_roadwork", "simulator", 1.0)]
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / f"{i}.jpg").write_bytes(encode_jpeg(scene(i, cone=sub == "roadwork")))
        rows.append({"file": f"{sub}/{i}.jpg", "label": int(sub == "roadwork"), "source": "hard_examples",
                     "group": str(i), "provenance": prov, "weight": w})
    with (root / "manifest.csv").open("w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    samples = load_image_folder(root)
    by_name = {s.name: s for s in samples}
    assert by_name["1.jpg"].meta == {"name": "1.jpg", "provenance": "teacher", "weight": 0.5}
    w = balanced_weights(samples)
    share = {s.name: float(x) for s, x in zip(samples, w, strict=True)}
    assert share["1.jpg"] == pytest.approx(share["0.jpg"] / 2)  # a teacher label is drawn half as often
    assert share["2.jpg"] == pytest.approx(share["3.jpg"]) and sum(share.values()) == pytest.approx(1.0)
    rows[0]["weight"] = "heavy"
    with (root / "manifest.csv").open("w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    with pytest.raises(DatasetError, match="not a number"):
        load_image_folder(root)
