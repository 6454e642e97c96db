"""The learning loop on drawn scenes: a deliberately weak colour model serves labelled traffic, the hard
examples it produces are mined, a candidate is trained, gated on a held-out set and promoted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from roadminer.core.config import load_settings
from roadminer.imaging.decode import ImagePolicy, decode_rgb, encode_jpeg
from roadminer.imaging.scenes import draw_scene, scene_rng, write_scene_folder
from roadminer.imaging.views import validator_view
from roadminer.lifecycle.distill import distill
from roadminer.lifecycle.loop import LearningLoop, parse_every
from roadminer.lifecycle.promote import bonnet_gate, gate, promote
from roadminer.lifecycle.registry import ModelRegistry, RegistryError, build_router
from roadminer.models.base import ImageBatch
from roadminer.state.backends.memory import MemoryStore
from roadminer.state.layer import RequestInfo, StateLayer

# A near-uninformative colour model: a faint yellow cue only, answers hug 0.5.
WEAK = {"coef": [0.0, 0.0, 0.0, 0.15, 0.0], "intercept": -0.05, "version": "colour-weak"}


def _settings(tmp_path: Path, **learning: object):  # type: ignore[no-untyped-def]
    weak = tmp_path / "weak.json"
    weak.write_text(json.dumps(WEAK))
    held = tmp_path / "held_out"
    write_scene_folder(held, 30, seed=101, size=224)
    over = {
        "cascade.tiers": [{"name": "colour", "kind": "colour", "options": {"coefs_path": str(weak)}}],
        "learning.models_dir": str(tmp_path / "models"),
        "learning.work_dir": str(tmp_path / "work"),
        "learning.held_out": str(held),
        "learning.eval_levels": [0, 1],
        "learning.min_queue": 20,
    }
    over.update({f"learning.{k}": v for k, v in learning.items()})
    return load_settings(None, over)


async def _serve_labelled_traffic(settings, layer: StateLayer, n: int, seed: int) -> None:  # type: ignore[no-untyped-def]
    """What a simulator does: validator-parity views with known labels, answered by the served model."""
    router = build_router(settings, ModelRegistry(settings.learning.models_dir))
    rng = np.random.default_rng(seed)
    policy = ImagePolicy()
    for i in range(n):
        label = i % 2
        view = validator_view(draw_scene(scene_rng(seed, i), bool(label), 224), int(rng.integers(0, 2)), rng)
        payload = encode_jpeg(view)
        key = hashlib.sha256(payload).hexdigest()
        res = router.predict(ImageBatch(rgb=[decode_rgb(payload, policy)], payloads=[payload], keys=[key]))
        tier_probs = {k: float(v[0]) for k, v in res.tier_probs.items()}

        class _Ans:
            prob = float(res.prob[0])
            tier = res.exit_tier[0]

        await layer.observe(
            RequestInfo(validator="sim", image_hash=key, payload=payload, label=label), _Ans(), tier_probs
        )


async def test_loop_improves_weak_model_and_promotes(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    layer = StateLayer.from_config(settings.state, store=MemoryStore())
    await _serve_labelled_traffic(settings, layer, 80, seed=7)
    assert layer.queued >= 40  # the weak model is unsure of almost everything
    loop = LearningLoop(settings, state=layer)

    rep = await loop.run_once()
    assert rep.skipped is None, rep.skipped
    assert rep.candidate and rep.promotion and rep.promotion["promoted"], rep.promotion
    before, after = rep.promotion["current_metrics"], rep.promotion["candidate_metrics"]
    print(f"\nlearning loop on drawn scenes: before {before}\nafter {after}")
    assert after["mcc"] > (before["mcc"] or 0) + 0.3
    assert after["brier"] < before["brier"]
    registry = loop.registry
    assert registry.current("colour") == rep.candidate
    card = registry.get(rep.candidate)
    assert card.status == "promoted" and card.metrics["held_out"]["mcc"] == after["mcc"]
    assert [e["event"] for e in registry.events()] == ["promote"]
    assert (await layer.queue.stats())["pending"] == 0  # mined entries were acknowledged

    # nothing new mined: the next iteration skips instead of retraining on the same data
    rep2 = await loop.run_once()
    assert rep2.skipped and rep2.candidate is None
    assert (Path(settings.learning.work_dir) / "loop.jsonl").read_text().count("\n") == 2


def _fitted_colour(tmp_path: Path) -> Path:
    """A colour model fitted on a few labelled drawn scenes (a decent model to compare with)."""
    from roadminer.lifecycle.loop import _fit_colour_single_source
    from roadminer.training.data import load_dataset

    write_scene_folder(tmp_path / "fit", 20, seed=3, size=224)
    out = tmp_path / "fit_model" / "colour_cue.json"
    out.parent.mkdir(parents=True)
    _fit_colour_single_source(load_dataset(tmp_path / "fit"), out, [0, 1], seed=0)
    return out


async def test_gate_rejects_a_worse_candidate(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    registry = ModelRegistry(settings.learning.models_dir)
    good = _fitted_colour(tmp_path)
    bad = tmp_path / "bad.json"
    spec = json.loads(good.read_text())
    bad.write_text(json.dumps({**spec, "coef": [-c for c in spec["coef"]]}))  # the same cues, inverted
    g = registry.register("colour", "colour", {"colour_cue.json": good})
    res = promote(settings, registry, g.version)
    assert res.promoted and registry.current("colour") == g.version
    b = registry.register("colour", "colour", {"colour_cue.json": bad})
    res = promote(settings, registry, b.version)
    assert not res.promoted and any("MCC drops" in r for r in res.reasons)
    assert registry.current("colour") == g.version and registry.get(b.version).status == "rejected"
    with pytest.raises(RegistryError):
        registry.register("clf", "classifier", {"model.safetensors": tmp_path / "missing"})
    wrong_tier = registry.register("other", "colour", {"colour_cue.json": good})
    with pytest.raises(RegistryError):
        promote(settings, registry, wrong_tier.version)


def test_gate_rules() -> None:
    assert gate({"mcc": 0.8, "brier": 0.1}, {"mcc": 0.8, "brier": 0.1})[0]  # holds: passes
    assert not gate({"mcc": 0.79, "brier": 0.05}, {"mcc": 0.8, "brier": 0.1})[0]
    assert gate({"mcc": 0.79, "brier": 0.05}, {"mcc": 0.8, "brier": 0.1}, mcc_tolerance=0.02)[0]
    assert not gate({"mcc": 0.9, "brier": 0.11}, {"mcc": 0.8, "brier": 0.1})[0]
    assert not gate({"mcc": None, "brier": 0.1}, {"mcc": 0.8, "brier": 0.1})[0]
    assert bonnet_gate(0.05, 0.04)[0] and bonnet_gate(0.06, 0.04, tolerance=0.02)[0]
    ok, why = bonnet_gate(0.2, 0.03)
    assert not ok and "0.0300 -> 0.2000" in why
    assert parse_every("6h") == 21600 and parse_every("90") == 90
    with pytest.raises(ValueError):
        parse_every("soon")


async def test_distill_cascade_into_colour_student(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    registry = ModelRegistry(settings.learning.models_dir)
    teacher_spec = _fitted_colour(tmp_path)
    # An offline teacher: configured but not serving (enabled false), as a VLM judge would be.
    teacher = {"name": "teacher", "enabled": False, "options": {"coefs_path": str(teacher_spec)}}
    settings.cascade.tiers.append(settings.cascade.tiers[0].model_copy(update=teacher))
    data = tmp_path / "unlabelled_pool"
    write_scene_folder(data, 25, seed=55, size=224)
    from roadminer.training.data import load_dataset

    samples = load_dataset(data)
    card = distill(
        settings,
        registry,
        samples,
        student_tier="colour",
        work_dir=tmp_path / "distill",
        teacher_tier="teacher",
        levels=[0],
        use_labels=False,
    )
    assert card.tier == "colour" and card.data["teacher"] == "teacher"
    res = promote(settings, registry, card.version, levels=[0])
    print(f"\ndistilled student: before {res.current_metrics} after {res.candidate_metrics}")
    assert res.promoted and res.candidate_metrics["mcc"] > res.current_metrics["mcc"]


def test_promote_models_learn_cli(tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from roadminer.cli import app

    settings = _settings(tmp_path)
    cfg = tmp_path / "miner.yaml"
    cfg.write_text(
        yaml.safe_dump({"cascade": settings.cascade.model_dump(), "learning": settings.learning.model_dump()})
    )
    registry = ModelRegistry(settings.learning.models_dir)
    good = registry.register("colour", "colour", {"colour_cue.json": _fitted_colour(tmp_path)})
    runner = CliRunner()
    res = runner.invoke(app, ["promote", good.version, "--config", str(cfg), "--levels", "0", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert registry.current("colour") is None  # dry run
    res = runner.invoke(app, ["promote", good.version, "--config", str(cfg), "--levels", "0"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["promoted"] and registry.current("colour") == good.version
    res = runner.invoke(app, ["models", "--config", str(cfg)])
    assert json.loads(res.stdout)["serving"] == {"colour": good.version}
    res = runner.invoke(app, ["promote", "nope", "--config", str(cfg)])
    assert res.exit_code == 2
    res = runner.invoke(app, ["learn", "--once", "--config", str(cfg)])  # empty queue: skips, logs why
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["skipped"]


async def test_promotion_runs_the_bonnet_probe_when_donors_are_set(tmp_path: Path, shared_data: Path) -> None:
    """``learning.bonnet_donors``: both the served model and the candidate are probed on the held-out negatives
    with real windshield frames' bottom strips; the figures land in the card and the gate's reasons."""
    import csv
    import shutil

    donors = tmp_path / "donors"
    (donors / "roadwork").mkdir(parents=True)
    rows = [r for r in csv.DictReader((shared_data / "manifest.csv").open()) if r["source"] == "wzcity"][:4]
    for r in rows:
        shutil.copy(shared_data / r["file"], donors / "roadwork" / Path(r["file"]).name)
    settings = _settings(tmp_path, bonnet_donors=str(donors))
    registry = ModelRegistry(settings.learning.models_dir)
    card = registry.register("colour", "colour", {"colour_cue.json": _fitted_colour(tmp_path)})
    res = promote(settings, registry, card.version, levels=[0])
    line = next(r for r in res.reasons if r.startswith("bonnet probe"))
    probe = registry.get(card.version).metrics["bonnet_probe"]
    n_neg = sum(1 for p in (tmp_path / "held_out" / "no_roadwork").iterdir())
    for side in ("current", "candidate"):
        assert probe[side]["n"] == n_neg and 0 <= probe[side]["turned_by_strip"] <= probe[side]["fpr_with_strip"] <= 1
    assert f"{probe['candidate']['turned_by_strip']:.4f}" in line
    ok = probe["candidate"]["turned_by_strip"] <= probe["current"]["turned_by_strip"] + 0.02
    assert ("strip turns" not in line) == ok
    missing = _settings(tmp_path, bonnet_donors=str(tmp_path / "nowhere"))
    other = registry.register("colour", "colour", {"colour_cue.json": tmp_path / "fit_model" / "colour_cue.json"})
    with pytest.raises(ValueError, match="nowhere"):
        promote(missing, registry, other.version, levels=[0])
    assert registry.get(other.version).status == "candidate"  # a refused probe decides nothing
