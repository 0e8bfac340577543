"""Screening and free dispersion (seed 004 §1 and §A; DESIGN.md §3): patterns in use hold, unused ones fade.

A *pattern* is a rank-1 component of a level slot, ``B[s][:, i] · A[s][i, :]`` in every
module. Each tick its activity on the rows that use the slot is measured
(:class:`~lorahive.adapters.ActivityProbe`: how strongly it fires, as a gain) — during the
tick's first learning forward (``activity_levels`` asks the swarm for it; no extra pass),
or in one extra forward over the support when no learning ran — and, in the ``decay`` phase, divided by
the strongest pattern's activity in the level, so thresholds are scale-free; a slot with no
rows this tick has activity 0. An EMA of that relative activity decides the mode, with
hysteresis:

    free → screened  when  ema > up
    screened → free  when  ema < down        (down < up; in between a pattern keeps its mode)

and every pattern of a written slot decays toward its init snapshot (``B`` toward 0, ``A``
toward ``A0``) by ``screened_decay`` or ``free_decay``, times ``1 − inertia`` of the level
(``by_inertia``; a heavy level forgets as slowly as it learns — measured on the full stream,
unscaled decay took consolidated patterns out of the domain level at 1 %/tick): not a
penalty in the loss but a process, as the seed puts it. Slots rewritten by a migration this tick
(``view.shared["rewritten"]``) are re-factored, so their component order changed: their EMA
restarts from this tick's activity, and a rewritten slot whose strongest component is freed
at once counts as a conflict (decay undoing a migration, seed 004 §G).

What the health metrics need — each level's decay rate and energy per pattern, and the
inertia factor the rates carry — is left in ``view.shared["patterns"]``. Both thresholds are
multiplied by the level state's ``thresholds["screening"]`` (1 unless the entropy budget,
:mod:`lorahive.mechanisms.entropy_budget`, moved it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, final

import torch

from lorahive.config import ScreeningConfig
from lorahive.mechanisms.base import Action, TickView
from lorahive.mechanisms.peers import gather_rows, held, written

__all__ = ["Screening", "entropy_ratio", "hysteresis"]


def hysteresis(ema: torch.Tensor, screened: torch.Tensor, up: float, down: float) -> torch.Tensor:
    """The new modes: screened above ``up``, free below ``down``, unchanged in between."""
    return torch.where(ema > up, True, torch.where(ema < down, False, screened))


def entropy_ratio(rate: Any, energy: Any, screened_decay: float, free_decay: float, free_target: float) -> float | None:
    """``Σ rate·energy`` over the same sum at the target mix of free and screened rates (``None`` with no energy)."""
    total = float(energy.sum())
    if total <= 0.0:
        return None
    optimal = (free_target * free_decay + (1.0 - free_target) * screened_decay) * total
    return float((rate * energy).sum()) / optimal if optimal > 0 else None


@final
class Screening:
    """Per-pattern activity EMA, modes with hysteresis, and decay toward init (``decay`` phase)."""

    name = "screening"
    phases: tuple[str, ...] = ("decay",)

    def __init__(self, cfg: ScreeningConfig, levels: Sequence[str]) -> None:
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.levels = list(levels)
        self.activity_levels = tuple(self.levels)  # what the swarm measures during the tick's first learning forward
        self.ema: dict[str, torch.Tensor] = {}  # level -> (S, r) relative activity EMA
        self.screened: dict[str, torch.Tensor] = {}  # level -> (S, r) bool

    def _grown(self, level: str, shape: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        ema, scr = self.ema.get(level), self.screened.get(level)
        if ema is None or scr is None:
            ema, scr = torch.zeros(shape, device=device), torch.zeros(shape, dtype=torch.bool, device=device)
        ema, scr = ema.to(device), scr.to(device)
        if ema.shape[0] < shape[0]:  # the level grew (agents joined): new slots start free, inactive
            extra = shape[0] - ema.shape[0]
            ema = torch.cat([ema, ema.new_zeros(extra, shape[1])])
            scr = torch.cat([scr, scr.new_zeros(extra, shape[1])])
        return ema, scr

    def run(self, view: TickView) -> Action | None:
        core = view.core
        slots_of = written(view.peers, core, self.levels)
        levels = [lv for lv in self.levels if slots_of[lv]]
        if not levels or view.activity is None:
            return None
        activity = view.activity(levels)  # over every process's rows: the same on each
        rewritten: dict[str, set[int]] = view.shared.get("rewritten", {})
        patterns = view.shared.setdefault("patterns", {})
        report: dict[str, Any] = {}
        conflicts = 0
        for lv in levels:
            if lv not in activity:
                continue
            act, _ = activity[lv]  # (S, r)
            rel = act / act.max().clamp_min(1e-12)
            ema, scr = self._grown(lv, tuple(act.shape), act.device)  # type: ignore[arg-type]
            ema = self.cfg.ema * ema + (1.0 - self.cfg.ema) * rel
            fresh = sorted(rewritten.get(lv, ()))
            if fresh:
                idx = core.index(fresh)
                ema.index_copy_(0, idx, rel.index_select(0, idx))
            scale = view.states[lv].thresholds.get("screening", 1.0)
            scr = hysteresis(ema, scr, self.cfg.up * scale, self.cfg.down * scale)
            self.ema[lv], self.screened[lv] = ema, scr
            keep = self._keep(view, lv)
            rate = self._rates(scr, keep)  # (S, r)
            slots, energy = _energies(view, lv)  # every written slot, (len(slots), r)
            if slots:
                sel = core.index(slots)
                r_sel = rate.index_select(0, sel)
                mine = held(view.peers, core, lv, slots)
                core.decay_toward_init(lv, mine, r_sel if mine == slots else rate.index_select(0, core.index(mine)))
                moved = float((r_sel.square() * energy).sum().sqrt())
                n_scr = int(scr.index_select(0, sel).sum())
                patterns[lv] = {"rate": r_sel, "energy": energy, "scale": keep}
            else:
                moved, n_scr = 0.0, 0
            if fresh:  # re-factored slots are ordered by singular value: component 0 is the migrated pattern's strongest
                conflicts += int((~scr.index_select(0, core.index(fresh))[:, 0]).sum())
            report[lv] = {"screened": n_scr, "free": len(slots) * act.shape[1] - n_scr, "moved": moved}
        counts = view.shared.setdefault("ops", {})
        counts["decay"] = counts.get("decay", 0) + sum(v["screened"] + v["free"] for v in report.values())
        view.shared["conflicts"] = view.shared.get("conflicts", 0) + conflicts
        return Action("decay", {"levels": report}) if report else None

    def _rates(self, screened: torch.Tensor, keep: float) -> torch.Tensor:
        """Each pattern's decay rate per tick: ``screened_decay`` or ``free_decay`` by its mode, times ``keep``."""
        return torch.where(screened, self.cfg.screened_decay * keep, self.cfg.free_decay * keep)

    def _keep(self, view: TickView, level: str) -> float:
        """The factor on both decay rates: ``1 − inertia`` of the level with ``by_inertia``, else 1."""
        return 1.0 - view.states[level].inertia if self.cfg.by_inertia else 1.0

    def entropy(self, view: TickView, level: str, free_target: float) -> float | None:
        """``level``'s entropy ratio under the modes screening holds now (``None``: nothing written or measured yet)."""
        scr = self.screened.get(level)
        if scr is None:
            return None
        slots, energy = _energies(view, level)
        if not slots:
            return None
        sel = view.core.index(slots)
        keep = self._keep(view, level)
        rate = self._rates(scr.index_select(0, sel.to(scr.device)), keep)
        energy = energy.to(rate.device)
        return entropy_ratio(rate, energy, self.cfg.screened_decay * keep, self.cfg.free_decay * keep, free_target)

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"ema.{lv}": t for lv, t in self.ema.items()}
        out.update({f"screened.{lv}": t.to(torch.uint8) for lv, t in self.screened.items()})
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema = {k.removeprefix("ema."): v.float() for k, v in state.items() if k.startswith("ema.")}
        self.screened = {k.removeprefix("screened."): v.bool() for k, v in state.items() if k.startswith("screened.")}


def _energies(view: TickView, level: str) -> tuple[list[int], torch.Tensor]:
    """Every written slot of ``level`` (over all processes, sorted) and its :func:`_energy` rows, each from the process holding it."""
    core = view.core
    mine = held(view.peers, core, level, sorted(core.written[level]))
    slots, rows = gather_rows(view.peers, core, level, mine, {"energy": _energy(core, level, mine)} if mine else {})
    return slots, rows["energy"] if slots else torch.zeros(0, 1)


@torch.no_grad()
def _energy(core: Any, level: str, slots: Sequence[int]) -> torch.Tensor:
    """``Σ_modules ‖B[s][:, i]‖²`` per pattern of ``slots``: its share of the slot's weight (``(len(slots), r)``).

    Modules of one output size are stacked, so it costs a few kernels per shape, not per module.
    """
    if not slots:
        return torch.zeros(0, 1)
    idx = core.index(list(slots))
    groups: dict[int, list[torch.Tensor]] = {}
    for bank in core.banks(level):
        groups.setdefault(bank.out_features, []).append(bank.B)
    parts = [torch.stack([b.index_select(0, idx) for b in bs]).float().square().sum((0, 2)) for bs in groups.values()]
    return torch.stack(parts).sum(0)
