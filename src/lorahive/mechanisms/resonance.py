"""Horizontal resonance: favour proposals that agree with where the swarm is heading.

Seed 004 (§ "horizontal resonance"; DESIGN.md §3): proposal i is weighted by
``1 + α·cos_i`` when it points along the swarm's running direction (``cos_i ≥ 0``) and by
``1 + β·cos_i`` when it opposes it, the factor clamped to ``[0, cap]``. With ``α, β ≥ 0``
aligned proposals are boosted and opposed ones damped. The running direction of a level is
an exponential moving average of the unit vectors of its applied updates.

:class:`Resonance` wraps any aggregator: it scales each proposal's delta by its factor and
delegates, then folds the resulting update into the direction. With ``α = β = 0`` it
changes nothing and only tracks the direction, which is how the ledger's "cosine to the
swarm direction" is filled in when resonance is switched off.

Why a wrapper and not a compose-phase :class:`~lorahive.mechanisms.base.Mechanism`: the
weighting has to sit *inside* the aggregation, after validation (which must see the norms as
submitted and keep malformed proposals away from the arithmetic) and before clipping (which
must bound a proposal's boosted contribution). A mechanism running before or after the
aggregator could do neither without changing the numbers. It takes part in the generic
path all the same: the swarm checkpoints the aggregator's ``state_dict`` (this wrapper's
direction, as tensors) with every mechanism's state, under the name ``aggregation``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, final

import torch

from lorahive.mechanisms.aggregation import (
    Aggregate,
    Aggregator,
    Delta,
    Failure,
    Proposal,
    cosine,
    flatten,
    global_norm,
    scaled,
)
from lorahive.mechanisms.base import Action, TickView

__all__ = ["DirectionTracker", "Resonance", "SwarmDirection", "resonance_factor"]


def resonance_factor(cos: float, alpha: float, beta: float, cap: float) -> float:
    """``1 + α·cos`` if aligned (cos ≥ 0), ``1 + β·cos`` if opposed, clamped to [0, cap]."""
    raw = 1.0 + (alpha if cos >= 0 else beta) * cos
    return min(max(raw, 0.0), cap)


@final
class SwarmDirection:
    """Per level, an EMA of the unit directions of applied updates (flattened, keys sorted)."""

    def __init__(self, ema: float = 0.9) -> None:
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        self.ema = ema
        self.vectors: dict[str, torch.Tensor] = {}  # level -> (n_params,)

    def cosine(self, level: str, delta: Delta) -> float | None:
        """Cosine of ``delta`` to the level's direction; ``None`` before any update or on a size mismatch."""
        d = self.vectors.get(level)
        v = flatten(delta)
        if d is None or d.numel() != v.numel():
            return None
        return cosine(v, d.to(v.device))

    def update(self, level: str, delta: Delta) -> None:
        """Fold an applied update into the level's direction."""
        v = flatten(delta)
        n = torch.linalg.vector_norm(v)
        if not bool(torch.isfinite(n)) or n <= 0:
            return
        u = v / n
        d = self.vectors.get(level)
        if d is None or d.numel() != u.numel():
            self.vectors[level] = u
        else:
            self.vectors[level] = self.ema * d.to(u.device) + (1.0 - self.ema) * u

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"direction/{level}": v.detach().cpu().clone() for level, v in self.vectors.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.vectors = {k.removeprefix("direction/"): v.clone().float() for k, v in state.items() if k.startswith("direction/")}


@final
class Resonance:
    """Scale each proposal by its resonance factor, delegate, then update the direction."""

    def __init__(self, inner: Aggregator, alpha: float = 0.5, beta: float = 0.5, cap: float = 2.0, ema: float = 0.9, direction: SwarmDirection | None = None) -> None:
        """``direction``: a swarm direction kept by someone else (the :class:`DirectionTracker`
        mechanism of a run); without one the wrapper keeps and updates its own."""
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        if cap < 1:
            raise ValueError(f"cap must be >= 1, got {cap}")
        self.inner, self.alpha, self.beta, self.cap = inner, alpha, beta, cap
        self.tracks = direction is None
        self.direction = SwarmDirection(ema) if direction is None else direction
        self.name = f"resonance({inner.name}, α={alpha:g}, β={beta:g}, cap={cap:g})"

    def aggregate(self, tick: int, proposals: Sequence[Proposal], failures: Sequence[Failure] = ()) -> Aggregate:
        levels = {p.level for p in proposals}
        if len(levels) > 1:
            raise ValueError(f"one aggregate call aggregates one level; got {sorted(levels)}")
        cosines = [self.direction.cosine(p.level, p.delta) for p in proposals]
        factors = [1.0 if c is None else resonance_factor(c, self.alpha, self.beta, self.cap) for c in cosines]
        weighed = [
            p if f == 1.0 else dataclasses.replace(p, delta=scaled(p.delta, f))
            for p, f in zip(proposals, factors, strict=True)
        ]
        res = self.inner.aggregate(tick, weighed, failures)
        decisions = [
            dataclasses.replace(d, norm=global_norm(p.delta), cosine=c, resonance=f, weight=None if d.weight is None else d.weight * f)
            for d, p, c, f in zip(res.decisions, proposals, cosines, factors, strict=True)
        ]
        if self.tracks and res.update is not None and proposals:
            self.direction.update(proposals[0].level, res.update)
        return dataclasses.replace(res, decisions=decisions, metrics=res.metrics | {"strategy": self.name})

    def state_dict(self) -> dict[str, torch.Tensor]:
        return (self.direction.state_dict() if self.tracks else {}) | self.inner.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.tracks:
            self.direction.load_state_dict(state)
        self.inner.load_state_dict(state)


@final
class DirectionTracker:
    """The learning half of horizontal resonance, as a mechanism of the ``apply`` phase.

    It folds every applied update into its level's running direction (:class:`SwarmDirection`),
    which the :class:`Resonance` wrapper of the run's aggregator reads to weigh the next tick's
    proposals; the direction is this mechanism's checkpointed state, and each tick's cosines and
    factors are its ledger action. The weighting itself stays in the aggregation chain, because
    it must sit between validation (which judges proposals as submitted) and clipping (which
    bounds the boosted contribution); the order of DESIGN.md §2, step 2.
    """

    name: str = "resonance"
    phases: tuple[str, ...] = ("apply",)

    def __init__(self, direction: SwarmDirection, enabled: bool = True) -> None:
        self.direction, self.enabled = direction, enabled

    def run(self, view: TickView) -> Action | None:
        if not view.updates:
            return None
        for level, update in view.updates.items():
            self.direction.update(level, update)
        cosines = [d.cosine for d in view.decisions]
        factors = [d.resonance for d in view.decisions]
        return Action("direction", {"levels": sorted(view.updates), "agents": [d.agent for d in view.decisions], "cosines": cosines, "factors": factors})

    def state_dict(self) -> dict[str, Any]:
        return dict(self.direction.state_dict())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.direction.load_state_dict({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
