"""Cascade fitted from out-of-fold predictions: grouped CV of the fit, the stacking command path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from roadminer.cascade.consensus import ConsensusParams, fit_stacking
from roadminer.cascade.fit import grouped_cv
from roadminer.cascade.stack import load_oof, stack_from_oof, summary_table
from roadminer.core.scoring import prob_mcc as mcc
from roadminer.training.data import Sample


def _tiers(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three tiers (strong, weak, medium) on 4 groups of imbalanced labels (about 25% positive)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(int)
    s = 2 * y - 1
    cols = [s * q + rng.normal(0, 1, n) for q in (2.5, 0.6, 1.8)]
    groups = np.array(["a", "b", "c", "d"])[rng.integers(0, 4, n)]
    return 1 / (1 + np.exp(-np.stack(cols, axis=1))), y, groups


def test_grouped_cv_scores_every_row_with_a_fit_that_never_saw_its_group() -> None:
    probs, y, groups = _tiers(2000, 0)
    cv = grouped_cv(probs, y, groups, ["x", "colour", "z"], class_weight="balanced", mcc_threshold=True)
    assert np.all(np.isfinite(cv.prob)) and np.all(np.isfinite(cv.prob_all))
    assert set(cv.folds) == {"a", "b", "c", "d"}
    assert all(f["n_fit"] + f["n_held"] == len(y) for f in cv.folds.values())
    assert set(np.unique(cv.exit_index)) <= {0, 1, 2}
    # Pooling the three tiers beats the best single one on unseen groups, and early exit costs little.
    assert mcc(y, cv.prob_all) > mcc(y, probs[:, 0])
    assert mcc(y, cv.prob) >= mcc(y, cv.prob_all) - 0.03


def test_mcc_threshold_moves_the_stage_bias_only() -> None:
    probs, y, _ = _tiers(2000, 1)
    plain = fit_stacking(probs, y, ["x", "c", "z"], class_weight="balanced")
    tuned = fit_stacking(probs, y, ["x", "c", "z"], class_weight="balanced", mcc_threshold=True)
    for a, b in zip(plain.stages, tuned.stages, strict=True):
        assert a.weights == b.weights
    assert any(a.bias != b.bias for a, b in zip(plain.stages, tuned.stages, strict=True))


def test_stack_from_oof_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    sources = ["s1", "s2", "s3"]
    samples = [
        Sample(label=int(i % 3 == 0), path=Path(f"img{i}.jpg"), source=sources[i % 4 % 3], group=f"g{i}")
        for i in range(300)
    ]
    names = [s.name for s in samples]
    y = np.array([s.label for s in samples])
    z = np.stack([(2 * y - 1) * 2.0 + rng.normal(0, 1.2, len(y)) for _ in range(2)])  # 2 levels
    (tmp_path / "a.json").write_text(json.dumps({"names": names, "levels": [0, 1], "oof_logits": z.tolist()}))
    pc = 1 / (1 + np.exp(-((2 * y - 1) * 0.5 + rng.normal(0, 1, (2, len(y))))))
    (tmp_path / "c.json").write_text(json.dumps({"names": names, "levels": [0, 1], "oof_probs": pc.tolist()}))
    p, lv = load_oof(tmp_path / "c.json", names)
    assert p.shape == (2, 300) and lv == [0, 1]
    with pytest.raises(ValueError, match="not those of the dataset"):
        load_oof(tmp_path / "c.json", names[::-1])
    params, rep = stack_from_oof(samples, [("a", tmp_path / "a.json"), ("colour", tmp_path / "c.json")],
                                 tier_cost=[1.0, 0.05])
    assert params.fitted and params.tiers == ["a", "colour"] and len(params.stages) == 2
    assert set(rep["single_tier"]) == {"a", "colour"}
    assert abs(sum(rep["cascade"]["exit_rate"].values()) - 1) < 1e-6
    assert 0 < rep["cascade"]["relative_cost"] <= 1
    assert "| pooled |" in summary_table(rep)
    params.save(tmp_path / "consensus.json")
    back = ConsensusParams.load(tmp_path / "consensus.json")
    assert back.exit_confidence == params.exit_confidence


def test_default_cascade_builds_both_shipped_classifiers_with_the_fitted_consensus() -> None:
    from roadminer.cascade.router import EarlyExitRouter
    from roadminer.core.config import CascadeConfig
    from roadminer.imaging.scenes import draw_scene, scene_rng
    from roadminer.models.base import ImageBatch

    cfg = CascadeConfig()
    if not cfg.consensus_file or not Path(cfg.consensus_file).is_file():
        pytest.skip("shipped consensus not present")
    shipped = [f for f in Path(cfg.consensus_file).parent.iterdir() if f.suffix in (".safetensors", ".pt", ".onnx")]
    assert sum(f.stat().st_size for f in shipped) <= 25_000_000
    router = EarlyExitRouter.from_config(cfg)
    assert [t.name for t in router.tiers] == ["classifier", "classifier2"]
    archs = [t.describe()["arch"] for t in router.tiers]
    assert archs == ["efficientnet-lite0", "efficientnet-lite2"]
    assert router.consensus.fitted and router.consensus.tiers == ["classifier", "classifier2"]
    assert router.exit_conf[0] is not None and 0.5 < router.exit_conf[0] < 1 and router.exit_conf[1] is None
    rgb = [np.asarray(draw_scene(scene_rng(5, i), bool(i % 2), (224, 224))) for i in range(4)]
    res = router.predict(ImageBatch(rgb=rgb, payloads=[b""] * 4, keys=[str(i) for i in range(4)]))
    assert res.prob.shape == (4,) and np.all((res.prob > 0) & (res.prob < 1)) and np.all(res.prob != 0.5)
    assert set(res.exit_tier) <= {"classifier", "classifier2"} and not res.errors
    full = router.predict(ImageBatch(rgb=rgb, payloads=[b""] * 4, keys=[str(i) for i in range(4)]), early_exit=False)
    assert all(np.all(np.isfinite(full.tier_probs[n])) for n in ("classifier", "classifier2"))


def _grouped_oof(tmp_path: Path) -> tuple[list[Sample], list[tuple[str, Path]], ConsensusParams]:
    """Groups a (clear positives: leave at stage 0), b (doubtful for tier 0, tier 1 says no) and c (never held
    out), 2 levels; the consensus: stage 0 = tier 0, exit at 0.8; stage 1 = tier 1 alone."""
    from roadminer.cascade.consensus import Stage

    samples = [Sample(label=1, path=Path(f"{g}{i}.jpg"), source="city", group=g) for g in "abc" for i in range(10)]
    names = [s.name for s in samples]
    grp = np.array([s.group for s in samples])
    z0 = np.where(grp == "a", 3.0, 0.5)
    z1 = np.where(grp == "a", 3.0, -2.0)
    files = []
    for t, z in (("first", z0), ("second", z1)):
        zz = np.where(grp == "c", np.nan, z)
        path = tmp_path / f"{t}.json"
        path.write_text(json.dumps({"names": names, "levels": [0, 3],
                                    "oof_logits": [[None if np.isnan(v) else v for v in zz]] * 2}))
        files.append((t, path))
    params = ConsensusParams(tiers=["first", "second"], stages=[Stage([1.0]), Stage([0.0, 1.0])],
                             exit_confidence=[0.8, None], fitted=True)
    return samples, files, params


def test_score_oof_replays_the_consensus_on_held_out_groups_only(tmp_path: Path) -> None:
    from roadminer.cascade.stack import score_oof, score_table

    samples, files, params = _grouped_oof(tmp_path)
    rep = score_oof(samples, files, params)
    assert rep["images"] == 20 and set(rep["per_group"]) == {"a", "b"}  # group c was never held out
    a, b = rep["per_group"]["a"], rep["per_group"]["b"]
    assert a["cascade"]["recall"] == 1.0 and a["exit_rate"] == {"first": 1.0, "second": 0.0}
    # b: tier 0 alone says yes (p 0.62), too doubtful to leave; tier 1 then says no
    assert b["first (raw)"]["recall"] == 1.0 and b["stage 0 (first)"]["recall"] == 1.0
    assert b["cascade"]["recall"] == 0.0 and b["exit_rate"] == {"first": 0.0, "second": 1.0}
    assert rep["pooled"]["cascade"]["recall"] == 0.5 and rep["pooled"]["per_level"]["3"]["cascade"]["n"] == 20
    assert "| **pooled** | 40 | recall 1.000 | recall 0.500 | recall 1.000 | recall 0.500 |" in score_table(rep)
    with pytest.raises(ValueError, match="fitted on tiers"):
        score_oof(samples, files[::-1], params)
    other = json.loads(files[1][1].read_text())
    other["oof_logits"][0][0] = None
    files[1][1].write_text(json.dumps(other))
    with pytest.raises(ValueError, match="hold out different images"):
        score_oof(samples, files, params)


def test_cascade_score_command_on_the_shipped_consensus(shared_data: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from roadminer.cli import app
    from roadminer.training.data import load_dataset
    from testkit.data import tiny_copy

    data = tiny_copy(shared_data, tmp_path / "tiny")
    samples = load_dataset(data)
    city = np.array([s.source == "wzcity" for s in samples])
    y = np.array([s.label for s in samples])
    for t, scale in (("a", 2.0), ("b", 1.0)):  # a grouped CV's layout: answers for the held-out cities only
        z = np.where(city, (2 * y - 1) * scale, np.nan)
        (tmp_path / f"{t}.json").write_text(json.dumps({"names": [s.name for s in samples], "levels": [0, 1, 2, 3],
                                                        "oof_logits": [[None if np.isnan(v) else v for v in z]] * 4}))
    run = CliRunner().invoke
    r = run(app, ["cascade-score", "--images", str(data), "--tier", f"classifier={tmp_path / 'a.json'}",
                  "--tier", f"classifier2={tmp_path / 'b.json'}", "--report", str(tmp_path / "rep.json")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert set(rep["per_group"]) == {s.group for s in samples if s.source == "wzcity"}
    assert rep["pooled"]["cascade"]["recall"] == 1.0 and "| **pooled** |" in r.output
    r = run(app, ["cascade-score", "--images", str(data), "--tier", f"first={tmp_path / 'a.json'}",
                  "--tier", f"classifier2={tmp_path / 'b.json'}"])
    assert r.exit_code == 2 and "fitted on tiers" in r.output, r.output


def test_tiers_scored_on_other_views_are_not_stacked(tmp_path: Path) -> None:
    """CV files record a fingerprint of the evaluation views their rows were scored on (train-recipe writes
    it); tiers whose fingerprints differ (e.g. one scored with --eval-data) are refused, unrecorded ones pass."""
    samples = [Sample(label=i % 2, path=Path(f"img{i}.jpg"), source=f"s{i % 3}", group=f"g{i}") for i in range(60)]
    names = [s.name for s in samples]
    z = np.where(np.arange(60) % 2 == 1, 2.0, -2.0)[None] + np.random.default_rng(0).normal(0, 1, (1, 60))
    for name, views in (("a", "1" * 64), ("b", "1" * 64), ("c", "2" * 64), ("d", None)):
        rec = {"names": names, "levels": [0], "oof_logits": z.tolist()}
        if views is not None:
            rec["eval_views_sha256"] = views
        (tmp_path / f"{name}.json").write_text(json.dumps(rec))
    params, _ = stack_from_oof(samples, [("a", tmp_path / "a.json"), ("b", tmp_path / "b.json")])
    assert params.tiers == ["a", "b"]
    stack_from_oof(samples, [("a", tmp_path / "a.json"), ("d", tmp_path / "d.json")])  # older file: no record
    with pytest.raises(ValueError, match="different evaluation views") as e:
        stack_from_oof(samples, [("a", tmp_path / "a.json"), ("c", tmp_path / "c.json")])
    assert "a 111111111111" in str(e.value) and "c 222222222222" in str(e.value)
