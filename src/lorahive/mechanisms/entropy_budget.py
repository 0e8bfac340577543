"""The entropy budget (seed 004 §E; DESIGN.md §3): homeostasis between crystallisation and amnesia.

A level whose patterns are all screened cannot free anything (it only accumulates); one
whose patterns are all free forgets everything. Every tick, in the ``budget`` phase (first
after the agents solved, before the proposals are composed — seed 004 §G puts homeostasis
first), each screened level's dispersion entropy ratio under the modes screening holds now
(the health metric, :func:`~lorahive.mechanisms.screening.entropy_ratio`) is compared with
``[low, high]``:

    ratio < low    →  scale ← scale · raise_by   (crystallised: a pattern needs more activity
                                                  to stay screened, so the least active are freed)
    ratio > high   →  scale ← scale · lower_by   (amnesic: less activity keeps a pattern)

``scale`` is the level state's ``thresholds["screening"]`` (1 at the start, kept within
``[min_scale, max_scale]``), by which screening multiplies both hysteresis thresholds; it is
checkpointed with the level states. No pattern is forced into a mode — the thresholds move
and screening's own rule does the rest. (The seed's sketch multiplies "the screening
threshold" by 1.1 when entropy is too *high*, while its comments say the frozen case must
free patterns; the direction here is the one that restores the balance.)
"""

from __future__ import annotations

from typing import Any, final

from lorahive.config import EntropyBudgetConfig
from lorahive.mechanisms.base import Action, TickView
from lorahive.mechanisms.screening import Screening

__all__ = ["EntropyBudget"]


@final
class EntropyBudget:
    """Moves each screened level's screening thresholds toward the healthy entropy band (``budget``)."""

    name = "entropy_budget"
    phases: tuple[str, ...] = ("budget",)

    def __init__(self, cfg: EntropyBudgetConfig, screening: Screening, free_target: float) -> None:
        self.cfg = cfg
        self.screening = screening
        self.enabled = cfg.enabled and screening.enabled
        self.free_target = free_target

    def run(self, view: TickView) -> Action | None:
        report: dict[str, Any] = {}
        for lv in self.screening.levels:
            ratio = self.screening.entropy(view, lv, self.free_target)
            if ratio is None:
                continue
            th = view.states[lv].thresholds
            before = th.get("screening", 1.0)
            factor = self.cfg.raise_by if ratio < self.cfg.low else self.cfg.lower_by if ratio > self.cfg.high else 1.0
            th["screening"] = min(max(before * factor, self.cfg.min_scale), self.cfg.max_scale)
            report[lv] = {"entropy_ratio": ratio, "scale": th["screening"], "moved": th["screening"] != before}
        if not report:
            return None
        view.shared.setdefault("ops", {})["budget"] = sum(v["moved"] for v in report.values())
        return Action("budget", {"levels": report})

    def state_dict(self) -> dict[str, Any]:
        return {}  # the factors live in the level states, checkpointed with them

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
