"""Promotion gate: a candidate replaces the served version only if, on the same held-out views, MCC does
not drop and the Brier score holds or improves, and (with ``learning.bonnet_donors``) a pasted bonnet strip
does not turn more of its answers into road work. Both sides see identical images (same seed), so the
comparison is paired."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from loguru import logger

from roadminer.lifecycle.registry import ModelRegistry, RegistryError

SUMMARY_KEYS = ("n", "mcc", "accuracy", "auc", "brier", "ece")
T = TypeVar("T")


def note_model_event(settings: Any, version: str, event: str, **info: Any) -> bool:
    """Put a ``promoted``/``rejected`` event on the dashboard's model timeline in the shared state store
    (Redis; a memory store is private to this process, so nothing is written). Safe from sync code,
    with or without a running event loop; never raises. True when written."""
    if getattr(settings.state, "backend", "memory") != "redis":
        return False
    import asyncio
    import threading

    from roadminer.state.model_events import record_model_event
    from roadminer.state.store import build_store

    done: list[bool] = []

    async def write() -> None:
        store = build_store(settings.state)
        try:
            await asyncio.wait_for(record_model_event(store, version, event, **info), 5.0)
            done.append(True)
        finally:
            await store.close()

    def run() -> None:
        try:
            asyncio.run(write())
        except Exception as e:
            logger.warning("could not record model event {} {}: {!r}", event, version, e)

    t = threading.Thread(target=run, name="model-event", daemon=True)
    t.start()
    t.join(10.0)
    return bool(done)


@dataclass
class PromotionResult:
    candidate: str
    tier: str
    current: str | None  # None: the configured (unregistered) model
    promoted: bool
    reasons: list[str]
    candidate_metrics: dict[str, Any] = field(default_factory=dict)
    current_metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def gate(
    candidate: dict[str, Any],
    current: dict[str, Any],
    mcc_tolerance: float = 0.0,
    brier_tolerance: float = 0.0,
) -> tuple[bool, list[str]]:
    """(passes, reasons). MCC may not drop by more than ``mcc_tolerance``; Brier may not rise by more than
    ``brier_tolerance``."""
    reasons: list[str] = []
    c_mcc, o_mcc = candidate.get("mcc"), current.get("mcc")
    c_b, o_b = candidate.get("brier"), current.get("brier")
    if c_mcc is None or c_b is None:
        return False, ["candidate metrics incomplete (held-out set needs both labels)"]
    o_mcc = 0.0 if o_mcc is None else o_mcc
    o_b = 1.0 if o_b is None else o_b
    ok = True
    if c_mcc < o_mcc - mcc_tolerance:
        ok = False
        reasons.append(f"MCC drops {o_mcc:.4f} -> {c_mcc:.4f}")
    else:
        reasons.append(f"MCC {o_mcc:.4f} -> {c_mcc:.4f}")
    if c_b > o_b + brier_tolerance:
        ok = False
        reasons.append(f"Brier rises {o_b:.4f} -> {c_b:.4f}")
    else:
        reasons.append(f"Brier {o_b:.4f} -> {c_b:.4f}")
    return ok, reasons


def bonnet_gate(candidate: float, current: float, tolerance: float = 0.02) -> tuple[bool, str]:
    """(passes, reason) of the bonnet probe: the share of answers a pasted bonnet strip alone turned into
    road work may not rise by more than ``tolerance``."""
    if candidate > current + tolerance:
        return False, f"bonnet probe: strip turns {current:.4f} -> {candidate:.4f} of answers"
    return True, f"bonnet probe {current:.4f} -> {candidate:.4f}"


def _on_served_cascade(
    settings: Any, registry: ModelRegistry, overrides: dict[str, str] | None, run: Callable[[Any], T]
) -> T:
    """``run(router)`` on the cascade as served (plus ``overrides``), closing the router afterwards."""
    from roadminer.lifecycle.registry import build_router

    router = build_router(settings, registry, overrides, warmup=False)
    try:
        return run(router)
    finally:
        if hasattr(router, "close"):
            router.close()


def evaluate_bonnet(
    settings: Any,
    registry: ModelRegistry,
    negatives: Sequence[Any],
    donors: Sequence[Any],
    levels: Sequence[int],
    seed: int = 0,
    overrides: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``training.evaluate.strip_probe`` of the cascade as served (plus ``overrides``)."""
    from roadminer.training.evaluate import strip_probe

    res = _on_served_cascade(settings, registry, overrides, lambda router: strip_probe(
        router, negatives, donors, settings.learning.bonnet_height, levels, seed))
    return {"turned_by_strip": res["turned_by_strip"], "fpr": res["as_is"]["fpr"],
            "fpr_with_strip": res["with_strip"]["fpr"], "n": res["n"]}


def evaluate_cascade(
    settings: Any,
    registry: ModelRegistry,
    samples: Sequence[Any],
    levels: Sequence[int],
    seed: int = 0,
    overrides: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Metrics of the cascade as served (plus ``overrides``) on validator-parity views of ``samples``."""
    from roadminer.training.evaluate import evaluate_router

    res = _on_served_cascade(settings, registry, overrides, lambda router: evaluate_router(
        router, list(samples), levels=list(levels), seed=seed, progress=False))
    out = {k: res.get(k) for k in SUMMARY_KEYS}
    out["per_level"] = {
        lv: {k: m.get(k) for k in ("mcc", "brier")} for lv, m in res.get("per_level", {}).items()
    }
    return out


def load_held_out(settings: Any, held_out: str | Path | None) -> list[Any]:
    from roadminer.training.data import load_dataset

    path = held_out or settings.learning.held_out
    if not path:
        raise ValueError("no held-out set: pass --held-out DIR or set learning.held_out")
    return load_dataset(path)


def promote(
    settings: Any,
    registry: ModelRegistry,
    candidate: str,
    held_out: str | Path | None = None,
    samples: Sequence[Any] | None = None,
    levels: Sequence[int] | None = None,
    seed: int = 0,
    dry_run: bool = False,
    force: bool = False,
) -> PromotionResult:
    """Evaluate ``candidate`` against what its tier serves now and promote it when the gate passes."""
    card = registry.get(candidate)
    if card.tier not in {t.name for t in settings.cascade.tiers}:
        raise RegistryError(
            f"candidate {candidate} serves tier {card.tier!r}, which the cascade does not have"
        )
    samples = list(samples) if samples is not None else load_held_out(settings, held_out)
    levels = list(levels if levels is not None else settings.learning.eval_levels)
    current = registry.current(card.tier)
    cur_m = evaluate_cascade(settings, registry, samples, levels, seed)
    cand_m = evaluate_cascade(settings, registry, samples, levels, seed, overrides={card.tier: candidate})
    ok, reasons = gate(cand_m, cur_m, settings.learning.mcc_tolerance, settings.learning.brier_tolerance)
    bonnet: dict[str, Any] = {}
    if settings.learning.bonnet_donors:
        from roadminer.training.data import load_dataset

        negatives = [s for s in samples if s.label == 0]
        if negatives:
            donors = load_dataset(settings.learning.bonnet_donors)
            bonnet = {
                "current": evaluate_bonnet(settings, registry, negatives, donors, levels, seed),
                "candidate": evaluate_bonnet(settings, registry, negatives, donors, levels, seed,
                                             overrides={card.tier: candidate}),
            }
            ok_b, why = bonnet_gate(bonnet["candidate"]["turned_by_strip"], bonnet["current"]["turned_by_strip"],
                                    settings.learning.bonnet_tolerance)
            ok = ok and ok_b
            reasons.append(why)
        else:
            reasons.append("bonnet probe skipped: the held-out set has no negatives")
    if force and not ok:
        reasons.append("forced")
    result = PromotionResult(
        candidate,
        card.tier,
        current if isinstance(current, str) else None,
        ok or force,
        reasons,
        cand_m,
        cur_m,
    )
    card.metrics = {**card.metrics, "held_out": cand_m, "held_out_baseline": cur_m, "held_out_levels": levels}
    if bonnet:
        card.metrics["bonnet_probe"] = bonnet
    registry.update_card(card)
    gate_doc = {"candidate": cand_m, "current": cur_m, "levels": levels, "n": len(samples)}
    if bonnet:
        gate_doc["bonnet_probe"] = bonnet
    if dry_run:
        logger.info(
            "promotion dry run for {}: {} ({})", candidate, "pass" if ok else "fail", "; ".join(reasons)
        )
    elif result.promoted:
        registry.set_current(candidate, reason="; ".join(reasons), gate=gate_doc)
    else:
        registry.reject(candidate, reason="; ".join(reasons), gate=gate_doc)
        logger.info("candidate {} not promoted: {}", candidate, "; ".join(reasons))
    if not dry_run:
        note_model_event(
            settings,
            candidate,
            "promoted" if result.promoted else "rejected",
            tier=card.tier,
            reasons=reasons,
            mcc=None if cand_m.get("mcc") is None else float(cand_m["mcc"]),
            brier=None if cand_m.get("brier") is None else float(cand_m["brier"]),
        )
    return result
