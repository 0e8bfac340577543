"""Emergent inertia (seed 004 §2; DESIGN.md §3): the more a level is used, the heavier it gets.

At the start of every tick (``draw`` phase, so the tick's steps use it), for each level::

    density_l = users_l × frequency_l × gradient_l
    inertia_l = β_l + (1 − β_l) · tanh(density_l / k)

* ``users_l``: agents sharing the level's weights this tick — the agents with a task for a
  shared level, 1 for a per-agent or per-task level (each slot has one user), 0 if none;
* ``frequency_l``: an EMA over ticks of whether the level was used (had users and was
  non-zero or trained);
* ``gradient_l``: the level's RMS gradient, read from its optimizer's second moments
  (bias-corrected, averaged over the slots that stepped), over the largest value seen so
  far — in [0, 1], so ``k`` is in units of agents.

β_l is the level's configured inertia; the result is written into the level's
:class:`~lorahive.core.LevelState`, whose ``step_size = lr·(1 − inertia)`` every optimizer step
of the tick reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, final

import torch

from lorahive.config import InertiaConfig
from lorahive.mechanisms.base import Action, TickView
from lorahive.mechanisms.peers import written
from lorahive.tensors import to_device

__all__ = ["EmergentInertia", "emergent_inertia", "rms_gradient", "second_moments"]


def emergent_inertia(base: float, density: float, k: float) -> float:
    """``β + (1 − β)·tanh(density / k)``: β at no use, approaching 1 as density grows."""
    return base + (1.0 - base) * math.tanh(max(density, 0.0) / k)


@final
class EmergentInertia:
    """Sets every chosen level's inertia from its interaction density, each tick."""

    name = "inertia"
    phases: tuple[str, ...] = ("draw",)

    def __init__(self, cfg: InertiaConfig, levels: Sequence[str], base: Mapping[str, float]) -> None:
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.levels = list(levels)
        self.base = dict(base)  # level -> β_l
        self.frequency: dict[str, float] = dict.fromkeys(self.levels, 0.0)
        self.peak: dict[str, float] = dict.fromkeys(self.levels, 0.0)  # largest RMS gradient seen

    def run(self, view: TickView) -> Action | None:
        core = view.core
        active = [a for a, exs in view.support.items() if exs]
        grads = _gradients(view, self.levels)
        frozen = written(view.peers, core, [lv for lv in self.levels if not core.stack.get(lv).trainable])
        report: dict[str, Any] = {}
        for lv in self.levels:
            shared = core.stack.get(lv).scope == "shared"
            users = (len(active) if shared else 1) if active else 0
            used = users > 0 and (core.stack.get(lv).trainable or bool(frozen[lv]))
            f = self.cfg.ema * self.frequency[lv] + (1.0 - self.cfg.ema) * float(used)
            g = grads[lv]
            self.frequency[lv], self.peak[lv] = f, max(self.peak[lv], g)
            grad = g / self.peak[lv] if self.peak[lv] > 0 else 0.0
            density = users * f * grad
            st = view.states[lv]
            st.inertia = emergent_inertia(self.base[lv], density, self.cfg.k)
            report[lv] = {"inertia": st.inertia, "density": density, "step_size": st.step_size}
        return Action("inertia", {"levels": report})

    def state_dict(self) -> dict[str, Any]:
        return {"frequency": dict(self.frequency), "peak": dict(self.peak)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frequency.update({k: float(v) for k, v in state.get("frequency", {}).items() if k in self.frequency})
        self.peak.update({k: float(v) for k, v in state.get("peak", {}).items() if k in self.peak})


def _gradients(view: TickView, levels: Sequence[str]) -> dict[str, float]:
    """Each level's :func:`rms_gradient` over every process: each sums the slots it hosts, one gather for all levels."""
    mine = {lv: second_moments(view.core.optimizers[lv], view.peers.hosts) for lv in levels}
    parts = view.peers.gather(mine)
    out = {}
    for lv in levels:
        total, n = sum(p[lv][0] for p in parts), sum(p[lv][1] for p in parts)
        out[lv] = math.sqrt(total / n) if n else 0.0
    return out


def rms_gradient(opt: Any) -> float:
    """The RMS gradient an optimizer's second moments say, averaged over slots that stepped (0 before any step)."""
    total, n = second_moments(opt)
    return math.sqrt(total / n) if n else 0.0


@torch.no_grad()
def second_moments(opt: Any, keep: Callable[[int], bool] = lambda s: True) -> tuple[float, int]:
    """The sum over the slots of ``keep`` that stepped of each slot's mean bias-corrected second moment, and their number.

    One read from the device per call: per-slot means are summed there.
    """
    beta2 = opt.betas[1]
    sums: list[torch.Tensor] = []
    n = 0
    plans: dict[tuple[int, ...], tuple[list[int], torch.Tensor, torch.Tensor]] = {}
    device = opt.device_of_state()
    for name in opt.names():  # a fixed order: the sum is the same after a resume
        steps = tuple(opt.host_steps.get(name, ()))
        if steps not in plans:
            live = [s for s, t in enumerate(steps) if t > 0 and keep(s)]
            idx = torch.tensor(live, dtype=torch.long)
            corr = torch.tensor([1.0 - beta2 ** steps[s] for s in live])
            plans[steps] = (live, to_device(idx, device), to_device(corr, device))
        live, idx, corr = plans[steps]
        if not live:
            continue
        v = opt.moment_rows(name, "exp_avg_sq", live, index=idx, device=device)
        sums.append((v.flatten(1).double().mean(1) / corr).sum())
        n += len(live)
    return (float(torch.stack(sums).sum()) if sums else 0.0), n
