"""Vertical resonance (seed 004 §4; DESIGN.md §3): levels whose learning agrees speed up together.

A pattern that every level is learning at once is universal; a fast level pulling against
the slow ones is noise. Each tick the mechanism sketches what learning wrote into every
compared level — the difference between its weights after the ``apply`` phase (fast steps
and the swarm step done) and at the ``draw`` phase (before them), so migrations and decay,
which run later, are not counted as learning — in each module's output space, on inputs the
module really saw:

    sketch_m[j, n] = g_{m,j}ᵀ · ΔW_m · x_{m,n}      j = 1 … ``sketch`` fixed random g; n over the inputs

where ``x_{m,n}`` are the mean inputs of the first :data:`INPUT_ROWS` rows of the previous
tick's first learning forward at module m (kept by the activity probe, no extra pass; one
tick's two sketches share them). Probing with real inputs matters: with random input probes
two levels learning the *same* data measured cosines about 0, because each level's low-rank
A projects the same gradient onto its own subspace (``ΔW = −η·G·Xᵀ·P_A``), while on the
inputs themselves ``ΔW·x`` follows ``G`` for every level (``benchmarks/vertical_probe.py``).
A per-agent level's update is the mean over its slots that moved. Each level keeps a running
direction ``d``, an EMA of the tick's unit update that starts at the level's first update, and

    c = mean over pairs of compared levels that have a direction of  d_a · d_b

— the cosine of the two running directions times both their lengths. A level whose updates keep
one direction has ``|d| ≈ 1``; one whose updates wander has ``|d| → √((1 − ema)/(1 + ema))``
(1/3 at ema 0.8), so ``c`` counts agreement that persists, not the chance alignment of two
directions made of noise. With the cosine of the normalised directions (the first version),
a pattern only the context level learned, beside real minibatch noise at the other levels,
was boosted or damped on 6 of 110 ticks, and one that two of three levels learned resonated
on 31–48 % of its ticks; with ``d_a · d_b``, 0 and 0–3 % (``tests/test_vertical_resonance_planted.py``,
``benchmarks/vertical_planted.py``, 10 noise draws). The price: a pattern every level learns
at half the energy of its updates reads ``c`` ≈ 0.57 instead of 0.89. With ``ema = 0`` ``c``
is the cosine of this tick's updates. Then, for the next tick's steps:

    c > threshold     every compared level: lr = η · (1 + (boost − 1)·(c − threshold)/(1 − threshold)),
                      and this tick's ready migrations bypass the bandwidth queues (fast track)
    c < −threshold    the faster levels (all but the one with the largest base inertia): lr = η · damp
    otherwise         lr = η

η is the level's configured learning rate; the rate lives in the level state (checkpointed),
and its step size is ``lr · (1 − inertia)`` as ever.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, final

import torch

from lorahive.config import VerticalResonanceConfig
from lorahive.mechanisms.base import Action, TickView

__all__ = ["INPUT_ROWS", "VerticalResonance", "level_sketch"]

#: Rows of module inputs kept from a tick's first learning forward to probe the next tick's sketches.
INPUT_ROWS = 8


def _output_probes(core: Any, level: str, d: int, seed: int, cache: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The fixed ``G (d, out)`` of every module of ``level``, keyed by module path (shared across levels)."""
    out = []
    for i, (path, bank) in enumerate(core.named_banks(level)):
        if path not in cache:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
            cache[path] = (torch.randn(d, bank.out_features, generator=gen) / bank.out_features**0.5).to(bank.B.device)
        out.append(cache[path])
    return out


@torch.no_grad()
def level_sketch(core: Any, level: str, inputs: dict[str, torch.Tensor], d: int, seed: int = 0, cache: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``(slots, Σ_m d·rows_m)``: ``g_jᵀ·(a/r)·B[s]·A[s]·x_n`` for every slot s, module m, probe g_j and input x_n.

    ``inputs`` maps module paths to ``(rows, in)`` inputs the module saw (unit rows); a module
    without inputs is left out. The same ``inputs`` and ``G`` for every level make levels of
    any rank compare, in the output space of each module on real inputs.
    """
    probes = _output_probes(core, level, d, seed, {} if cache is None else cache)
    scale = core.stack.get(level).scale
    parts = []
    for (path, bank), g in zip(core.named_banks(level), probes, strict=True):
        x = inputs.get(path)
        if x is None:
            continue
        x = x.to(bank.A.device)
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        gb = torch.einsum("do,sor->sdr", g, bank.B.float())  # (S, d, r)
        ax = torch.einsum("sri,ni->srn", bank.A.float(), x)  # (S, r, rows)
        parts.append(torch.einsum("sdr,srn->sdn", gb, ax).flatten(1))  # (S, d·rows)
    if not parts:
        return torch.zeros(core.n_slots(level), 0)
    return scale * torch.cat(parts, dim=1)


@final
class VerticalResonance:
    """Cross-level agreement of learning directions, turned into learning rates (``draw``, ``apply``)."""

    name = "vertical_resonance"
    phases: tuple[str, ...] = ("draw", "apply")

    def __init__(self, cfg: VerticalResonanceConfig, levels: Sequence[str], base_lr: dict[str, float], base_inertia: dict[str, float], seed: int = 0) -> None:
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.levels = list(levels)
        self.base_lr = dict(base_lr)
        self.base_inertia = dict(base_inertia)
        self.seed = seed
        self.direction: dict[str, torch.Tensor] = {}  # level -> running direction, length ≤ 1 (modules·d,)
        self._before: dict[str, torch.Tensor] = {}
        self._probes: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, torch.Tensor] = {}  # module path -> (rows, in): the inputs this tick's sketch probes with
        self.wants_inputs = INPUT_ROWS  # the swarm keeps this many rows' module inputs from the tick's first learning forward

    def use_inputs(self, inputs: dict[str, torch.Tensor]) -> None:
        """Probe the next tick's sketches with these module inputs (``(rows, in)`` per module path)."""
        self.inputs = {k: v.detach().float() for k, v in inputs.items()}

    def _sketch(self, view: TickView, level: str) -> torch.Tensor:
        return level_sketch(view.core, level, self.inputs, self.cfg.sketch, self.seed, self._probes)

    def run(self, view: TickView) -> Action | None:
        if view.phase == "draw":
            self._before = {lv: self._sketch(view, lv) for lv in self.levels} if self.inputs else {}
            return None
        compared = bool(self._before)  # no sketch at draw (no inputs yet): nothing to compare this tick
        cosine = self._fold(view) if compared else None
        seen = view.shared.get("module_inputs")
        if seen:  # the next tick probes with this tick's inputs (the sketches of one tick must share theirs)
            self.use_inputs(seen)
        return self._decide(view, cosine) if compared else None

    def _fold(self, view: TickView) -> float | None:
        """Fold this tick's updates into the directions; their mean pairwise dot product (``None`` with < 2 levels)."""
        for lv in self.levels:
            delta = self._sketch(view, lv) - self._before[lv]  # (S, D)
            moved = delta.norm(dim=1) > 0
            if view.core.stack.get(lv).scope == "shared":
                update = delta[0]
            else:
                update = (delta * moved[:, None]).sum(0) / moved.sum().clamp_min(1)
            norm = update.norm()
            unit = torch.where(norm > 0, update / norm.clamp_min(1e-30), torch.zeros_like(update))
            prev = self.direction.get(lv)
            prev = torch.zeros_like(unit) if prev is None else prev.to(unit.device)
            started = prev.norm() > 0  # a level's first update is its direction (an EMA from 0 would shrink it)
            mixed = torch.where(started, self.cfg.ema * prev + (1.0 - self.cfg.ema) * unit, unit)
            self.direction[lv] = torch.where(norm > 0, mixed, prev)  # no update: keep the direction
        self._before = {}
        dirs = [self.direction[lv] for lv in self.levels if lv in self.direction]
        norms = torch.stack([d.norm() for d in dirs]).tolist() if dirs else []
        live = [d for d, n in zip(dirs, norms, strict=True) if n > 0]
        if len(live) < 2:
            return None
        return float(torch.stack([a @ b for a, b in itertools.combinations(live, 2)]).mean())

    def _decide(self, view: TickView, cosine: float | None) -> Action:
        factors = dict.fromkeys(self.levels, 1.0)
        mode = "neutral"
        if cosine is not None and cosine > self.cfg.threshold:
            mode = "resonant"
            f = 1.0 + (self.cfg.boost - 1.0) * (cosine - self.cfg.threshold) / (1.0 - self.cfg.threshold)
            factors = dict.fromkeys(self.levels, f)
            view.shared["resonant"] = True  # bandwidth: this tick's ready migrations take the fast track
        elif cosine is not None and cosine < -self.cfg.threshold:
            mode = "dissonant"
            slowest = max(self.levels, key=lambda lv: self.base_inertia[lv])
            factors = {lv: (1.0 if lv == slowest else self.cfg.damp) for lv in self.levels}
        for lv, f in factors.items():
            view.states[lv].lr = self.base_lr[lv] * f
        return Action("vertical", {"cosine": cosine, "mode": mode, "lr_factor": factors})

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"direction.{lv}": t for lv, t in self.direction.items()}
        out.update({f"inputs.{path}": t for path, t in self.inputs.items()})
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.direction = {k.removeprefix("direction."): v.float() for k, v in state.items() if k.startswith("direction.")}
        self.inputs = {k.removeprefix("inputs."): v.float() for k, v in state.items() if k.startswith("inputs.")}
