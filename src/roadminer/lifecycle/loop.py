"""The unattended learning loop: mine -> train -> promote (the miner hot-reloads what is promoted).

One iteration:
1. **teach**: the teacher (``learning.teacher_tier``, default the full cascade; see
   :mod:`roadminer.lifecycle.teacher`) labels the queued images nobody labelled, where it is confident.
2. **export**: every labelled image in the queue (human, simulator and teacher labels, each with its
   provenance and training weight ``learning.provenance_weights``; skipped ones left out) is synced into
   ``work_dir/labelled`` (``roadwork/``, ``no_roadwork/``, ``manifest.csv``). The folder keeps images
   after the queue has expired them; a relabelled image moves class. The queue itself is not consumed:
   a label given later still reaches the next iteration.
3. **train**: when labels newer than the last training exist (and at least ``learning.min_queue`` in
   all), fine-tune the loop's tier (``learning.tier``, default the first: the shipped EfficientNet-Lite0
   classifier) on the base data (``learning.train_data``) plus that folder, starting from the served
   version; register the result as a candidate.
4. **promote**: the gate of :mod:`roadminer.lifecycle.promote` on the labelled held-out folder. A running
   miner follows the registry and hot-reloads what is promoted.

``export_for_training`` is the queue side of ``roadminer train --from-queue``.
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from roadminer.lifecycle.promote import PromotionResult, promote
from roadminer.lifecycle.registry import ModelCard, ModelRegistry


@dataclass
class LoopReport:
    iteration: int
    started: float
    exported: dict[str, Any] | None = None
    labelled_available: int = 0
    candidate: str | None = None
    promotion: dict[str, Any] | None = None
    skipped: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def loop_tier(settings: Any) -> tuple[str, str]:
    """(name, kind) of the tier the loop retrains."""
    tiers = [t for t in settings.cascade.tiers if t.enabled]
    name = settings.learning.tier or tiers[0].name
    for t in tiers:
        if t.name == name:
            return t.name, t.kind
    raise ValueError(f"learning.tier {name!r} is not an enabled cascade tier ({[t.name for t in tiers]})")


async def export_for_training(
    settings: Any,
    out_dir: str | Path,
    state: Any = None,
    consume: bool = True,
    teacher: bool = True,
    registry: ModelRegistry | None = None,
    labelled_only: bool = False,
) -> Any:
    """Export the queue into ``out_dir`` (roadwork/ no_roadwork/ [unlabeled/] manifest.csv) for training,
    after the teacher labelled what it is sure of (``learning.teacher_tier``; None: no teacher).
    ``pseudo_labelled`` in the report counts this run's teacher labels."""
    from roadminer.state.layer import StateLayer

    owned = state is None
    layer = state or StateLayer.from_config(settings.state)
    try:
        taught = None
        if teacher and settings.learning.teacher_tier:
            from roadminer.lifecycle.teacher import teach_queue

            taught = await teach_queue(settings, layer.queue, registry)
        rep = await layer.queue.export(
            out_dir,
            consume=consume,
            consumer="learner",
            labelled_only=labelled_only,
            weights=dict(settings.learning.provenance_weights),
        )
        if taught is not None:
            rep.pseudo_labelled = taught.total
        return rep
    finally:
        if owned:
            await layer.close()


def _label_times(folder: Path) -> list[float]:
    """``labelled_at`` of every exported image still in a class folder."""
    path = folder / "manifest.csv"
    if not path.is_file():
        return []
    out = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if (folder / row.get("file", "")).is_file() and row.get("file", "").split("/")[0] in (
                "roadwork",
                "no_roadwork",
            ):
                try:
                    out.append(float(row.get("labelled_at") or 0.0))
                except ValueError:
                    out.append(0.0)
    return out


def _count_labelled(folder: Path) -> int:
    return sum(
        1
        for sub in ("roadwork", "no_roadwork")
        if (folder / sub).is_dir()
        for p in (folder / sub).iterdir()
        if p.is_file()
    )


def train_candidate(
    settings: Any, registry: ModelRegistry, tier: str, kind: str, extra_dirs: list[Path], out_dir: Path
) -> ModelCard:
    """Fine-tune ``tier`` on the base data plus ``extra_dirs``, from its served version; register it."""
    from roadminer.training.data import load_many

    base = list(settings.learning.train_data)
    parent_card = registry.current_card(tier)
    parent = parent_card.version if parent_card else None
    data = {"base": base, "extra_dirs": [str(p) for p in extra_dirs]}
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "colour":
        from roadminer.training.colour_fit import fit_colour_cue

        samples = load_many([*base, *extra_dirs])
        if {s.label for s in samples} != {0, 1}:
            raise ValueError("training needs both labels in the base data + hard examples")
        levels = list(settings.learning.eval_levels)
        out = out_dir / "colour_cue.json"
        if len({s.source for s in samples}) > 1:
            spec = fit_colour_cue(samples, out, levels=levels, seed=settings.train.seed, workers=1)
        else:  # one source (hard examples only): no leave-one-source-out report, same features and fit
            spec = _fit_colour_single_source(samples, out, levels, settings.train.seed)
        data.update({"n": len(samples), "levels": levels})
        metrics = {"train_pooled": spec.get("pooled_in_sample")}
        return registry.register(
            tier,
            kind,
            {"colour_cue.json": out},
            parent=parent,
            data=data,
            metrics=metrics,
            notes="colour cue refit on base data + hard examples",
        )
    if kind == "classifier":
        from roadminer.models.classifier import resolve_weights
        from roadminer.training.train import train

        init = registry.resolved_options(parent_card).get("weights") if parent_card else None
        if init is None:
            init = next((t.options.get("weights") for t in settings.cascade.tiers if t.name == tier), None)
        init = str(resolve_weights(init))  # the shipped file by its name, as the tier finds it
        card = train(
            base, out_dir, settings.train, extra_dirs=extra_dirs, init_checkpoint=init, progress=False
        )
        return registry.register(
            tier,
            kind,
            {"model.safetensors": out_dir / "model.safetensors", "train_card.json": out_dir / "card.json"},
            parent=parent,
            data={**data, "n": card.get("data", {}).get("n")},
            metrics={"calibration": card.get("calibration")},
            notes="fine-tuned on base data + hard examples",
        )
    raise ValueError(f"the learning loop cannot train tier kind {kind!r} (colour, classifier)")


def _fit_colour_single_source(samples: list[Any], out: Path, levels: list[int], seed: int) -> dict[str, Any]:
    import numpy as np

    from roadminer.core.scoring import binary_metrics
    from roadminer.lifecycle.distill import fit_soft_logistic
    from roadminer.models.colour import FEATURE_NAMES
    from roadminer.training.colour_fit import _predict, compute_features

    feats = compute_features(samples, levels, seed, workers=1)
    x = feats.reshape(-1, feats.shape[2])
    y = np.tile([s.label for s in samples], len(levels)).astype(np.float64)
    spec = fit_soft_logistic(x, y)
    spec.update(
        {
            "version": f"colour-{out.parent.name}",
            "features": list(FEATURE_NAMES),
            "levels": levels,
            "n": len(samples),
            "pooled_in_sample": binary_metrics(y.astype(int), _predict(spec, x)),
        }
    )
    out.write_text(json.dumps(spec, indent=2) + "\n")
    return spec


class LearningLoop:
    def __init__(self, settings: Any, registry: ModelRegistry | None = None, state: Any = None) -> None:
        self.settings = settings
        self.registry = registry or ModelRegistry(settings.learning.models_dir)
        self.state = state
        self.work = Path(settings.learning.work_dir)
        self.iteration = 0

    def _loop_state(self) -> dict[str, Any]:
        path = self.work / "loop_state.json"
        try:
            return dict(json.loads(path.read_text())) if path.is_file() else {}
        except (OSError, ValueError):
            return {}

    async def run_once(self) -> LoopReport:
        t0 = time.time()
        self.iteration += 1
        rep = LoopReport(iteration=self.iteration, started=t0)
        tier, kind = loop_tier(self.settings)
        labelled = self.work / "labelled"
        exported = await export_for_training(
            self.settings, labelled, self.state, consume=False, registry=self.registry, labelled_only=True
        )
        rep.exported = exported.to_json()
        times = _label_times(labelled)
        rep.labelled_available = _count_labelled(labelled)
        trained_through = float(self._loop_state().get("trained_through", 0.0))
        fresh = sum(t > trained_through for t in times)
        if fresh == 0 or rep.labelled_available < self.settings.learning.min_queue:
            rep.skipped = (
                f"{fresh} new labelled hard examples ({rep.labelled_available} in all); "
                f"training needs new ones and at least {self.settings.learning.min_queue}"
            )
            logger.info("learning loop {}: {}", self.iteration, rep.skipped)
            return self._finish(rep, t0)
        run_dir = self.work / "candidates" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        card = await asyncio.to_thread(
            train_candidate, self.settings, self.registry, tier, kind, [labelled], run_dir
        )
        rep.candidate = card.version
        rep.notes.append(f"trained on {rep.labelled_available} labelled hard examples ({fresh} new)")
        (self.work / "loop_state.json").write_text(
            json.dumps({"trained_through": max(times, default=0.0), "candidate": card.version}) + "\n"
        )
        result: PromotionResult = await asyncio.to_thread(promote, self.settings, self.registry, card.version)
        rep.promotion = result.to_json()
        logger.info(
            "learning loop {}: candidate {} {} ({})",
            self.iteration,
            card.version,
            "promoted" if result.promoted else "rejected",
            "; ".join(result.reasons),
        )
        return self._finish(rep, t0)

    def _finish(self, rep: LoopReport, t0: float) -> LoopReport:
        rep.seconds = round(time.time() - t0, 2)
        self.work.mkdir(parents=True, exist_ok=True)
        with (self.work / "loop.jsonl").open("a") as f:
            f.write(json.dumps(rep.to_json(), default=str) + "\n")
        return rep

    async def run_forever(self, every_s: float, iterations: int | None = None) -> list[LoopReport]:
        reports: list[LoopReport] = []
        while iterations is None or len(reports) < iterations:
            try:
                reports.append(await self.run_once())
            except Exception as e:  # an unattended loop logs and tries again next time
                logger.opt(exception=e).error("learning loop iteration {} failed", self.iteration)
            if iterations is not None and len(reports) >= iterations:
                break
            await asyncio.sleep(every_s)
        return reports


def parse_every(text: str) -> float:
    """'6h', '30m', '90s', '1d' or plain seconds -> seconds (positive)."""
    from roadminer.core.cli_args import parse_duration

    value = parse_duration(text)
    if value <= 0:
        raise ValueError("interval must be positive")
    return value
