"""Health of the system (seed 004 § Health Metrics), measured every tick (``health`` phase).

| metric | what it is here |
|---|---|
| ``entropy_ratio`` (per level) | dispersion entropy ``Σ_i rate_i · energy_i`` over the level's patterns (decay rate × ``Σ_m ‖B[:, i]‖²``, from screening) over the "optimal" entropy, the same sum at the rates (with the level's inertia factor) of ``observe.health.free_target`` free patterns: 1 is balanced, → 0 crystallised (all screened), ≥ 2 amnesic |
| ``queue_depth`` (per channel) | patterns waiting in a migration queue |
| ``wait_time`` (per channel) | mean age in ticks of the waiting patterns (of this tick's migrations when none waits) |
| ``rejection_rate`` | migration requests dropped or rejected so far / requests so far |
| ``fast_track_rate`` | migrations that bypassed the queue so far / migrations so far (``None`` before the first) |
| ``conflict_rate`` | operations one mechanism undid or rejected after another accepted them, over all mechanism operations so far (decays applied, migrations requested, proposals aggregated) |

Each metric gets the seed's healthy / warning / critical status (:mod:`lorahive.observe.health_bands`),
a per-level or per-channel metric the worst of its entries, and the tick an overall status (the worst).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, final

from lorahive.config import HealthConfig, RunConfig, ScreeningConfig
from lorahive.mechanisms.base import Action, Mechanism, TickView
from lorahive.mechanisms.registry import is_hive
from lorahive.mechanisms.screening import entropy_ratio
from lorahive.observe.health_bands import status, worst

__all__ = ["Health", "entropy_ratio", "health_factory"]


def health_factory(cfg: RunConfig, agents: Sequence[str]) -> Mechanism | None:
    """The health monitor of a hive run (a factory for :func:`~lorahive.mechanisms.registry.build_mechanisms`)."""
    return Health(cfg.observe.health, cfg.mechanisms.screening) if is_hive(cfg) else None


@final
class Health:
    """The seed's health metrics with statuses, one ``mechanism:health`` ledger event per tick."""

    name = "health"
    phases: tuple[str, ...] = ("health",)

    def __init__(self, cfg: HealthConfig, screening: ScreeningConfig) -> None:
        self.cfg = cfg
        self.screening = screening
        self.enabled = cfg.enabled
        self.ops = 0
        self.conflicts = 0
        self.last: dict[str, Any] = {}

    def run(self, view: TickView) -> Action | None:
        ops = view.shared.get("ops", {})
        self.ops += sum(ops.values()) + len(view.proposals)
        self.conflicts += int(view.shared.get("conflicts", 0))
        patterns = view.shared.get("patterns", {})
        entropy = {
            lv: entropy_ratio(p["rate"], p["energy"], self.screening.screened_decay * p.get("scale", 1.0), self.screening.free_decay * p.get("scale", 1.0), self.cfg.free_target)
            for lv, p in patterns.items()
        }
        bw = view.shared.get("bandwidth", {})
        metrics: dict[str, Any] = {
            "entropy_ratio": entropy,
            "queue_depth": dict(bw.get("queue_depth", {})),
            "wait_time": dict(bw.get("wait_time", {})),
            "rejection_rate": float(bw.get("rejection_rate", 0.0)),
            "fast_track_rate": bw.get("fast_track_rate"),
            "conflict_rate": self.conflicts / self.ops if self.ops else 0.0,
        }
        statuses = {k: _status(k, v) for k, v in metrics.items()}
        self.last = {"metrics": metrics, "status": statuses, "overall": worst(statuses.values())}
        return Action("health", dict(self.last))

    def state_dict(self) -> dict[str, Any]:
        return {"ops": self.ops, "conflicts": self.conflicts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ops, self.conflicts = int(state.get("ops", 0)), int(state.get("conflicts", 0))


def _status(metric: str, value: Any) -> str:
    if isinstance(value, dict):
        return worst(status(metric, v) for v in value.values()) if value else "n/a"
    return status(metric, value)
