"""Aggregation: compose agents' proposals for a shared level into one update.

Shaped like Flower's ``Strategy.aggregate_fit`` (``flwr/server/strategy/``): a strategy is
a small class holding its hyper-parameters with one method,
``aggregate(tick, proposals, failures) -> Aggregate``, and the math lives in pure functions
beside it (Flower's ``aggregate.py``). An :class:`~lorahive.mechanisms.base.Aggregate` holds
the update (``None`` means "no update this tick"), one typed
:class:`~lorahive.mechanisms.base.Decision` per proposal and the tick's metrics.

Strategies: :class:`Mean` (FedAvg with equal weights), :class:`Weighted` (weights =
quality × reputation, DESIGN.md §3), :class:`Median` (coordinate-wise median, Yin et al.
2018) and :class:`TrimmedMean` (coordinate-wise β-trimmed mean, Yin et al. 2018; Flower's
``FedTrimmedAvg``). :class:`Clipped` wraps any of them and bounds each proposal's global L2
norm first (Flower's DP clipping wrappers; McMahan et al. 2018). Validation and horizontal
resonance are wrappers too (:mod:`.validation`, :mod:`.resonance`).

Metrics always hold ``strategy``, ``n_proposals``, ``n_accepted``, ``n_rejected``,
``n_failures``, ``failures`` and ``norm`` (of the update, or ``None``). The decisions come
one per proposal received, in order; a strategy decides ``accepted`` with ``weight`` the
factor by which the proposal's raw delta enters the update (for median and trimmed mean the
nominal 1/n), and wrappers refine a decision with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Protocol, final

import torch

from lorahive.mechanisms.base import Aggregate, Decision, Delta, Proposal

__all__ = [
    "Aggregate",
    "Aggregator",
    "Clipped",
    "Decision",
    "Delta",
    "Failure",
    "Mean",
    "Median",
    "Metrics",
    "Proposal",
    "Stateless",
    "TrimmedMean",
    "Weighted",
    "clip_scale",
    "coordinate_median",
    "cosine",
    "flatten",
    "global_norm",
    "decide",
    "key_norms",
    "scaled",
    "summarize",
    "trimmed_mean",
    "weighted_mean",
]

#: What a strategy reports beside its update and decisions; see the module docstring for the keys.
Metrics = dict[str, Any]
#: A proposal that could not be produced (an exception or a message).
Failure = BaseException | str


class Aggregator(Protocol):
    """Anything that turns one tick's proposals into an update (or none) and metrics."""

    #: Short description of the strategy (wrappers include their inner one's).
    name: str

    def aggregate(self, tick: int, proposals: Sequence[Proposal], failures: Sequence[Failure] = ()) -> Aggregate: ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that must be checkpointed for an exact resume (empty when stateless)."""
        ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


class Stateless:
    """Mixin for strategies with nothing to checkpoint."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        return None


# --- pure math ---------------------------------------------------------------------------


def key_norms(delta: Delta) -> dict[str, float]:
    """The L2 norm of each tensor of a delta, read back in one go (NaN/inf where a tensor holds one)."""
    if not delta:
        return {}
    norms = torch._foreach_norm([t.detach().float() for t in delta.values()])
    return dict(zip(delta, torch.stack(norms).tolist(), strict=True))


def global_norm(delta: Delta) -> float:
    """L2 norm over all tensors of a delta, as if they were one flat vector."""
    return math.sqrt(sum(v * v for v in key_norms(delta).values()))


def flatten(delta: Delta, keys: Sequence[str] | None = None) -> torch.Tensor:
    """One flat fp32 vector of a delta, its tensors concatenated in ``keys`` (default: sorted) order."""
    keys = sorted(delta) if keys is None else keys
    if not keys:
        return torch.zeros(0)
    return torch.cat([delta[k].detach().float().reshape(-1) for k in keys])


def cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> float:
    """Cosine similarity of two flat vectors; 0 when either is (near) zero."""
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    if na <= eps or nb <= eps:
        return 0.0
    return float(torch.dot(a, b) / (na * nb))


def clip_scale(norm: float, max_norm: float) -> float:
    """The factor that brings a vector of ``norm`` within ``max_norm`` (1 when it already is)."""
    return 1.0 if norm <= max_norm else (max_norm / norm if norm > 0 else 0.0)


def weighted_mean(deltas: Sequence[Delta], weights: Sequence[float]) -> Delta:
    """Σ_i w_i · Δ_i / Σ_i w_i, key by key (one multi-tensor kernel per proposal, not one per tensor)."""
    total = float(sum(weights))
    keys = list(deltas[0])
    acc = torch._foreach_mul([deltas[0][k] for k in keys], weights[0])
    for w, d in zip(weights[1:], deltas[1:], strict=True):
        torch._foreach_add_(acc, torch._foreach_mul([d[k] for k in keys], w))  # the same sums, in the same order
    torch._foreach_div_(acc, total)
    return dict(zip(keys, acc, strict=True))


def scaled(delta: Delta, factor: float) -> Delta:
    """``factor · Δ``, key by key, in one multi-tensor kernel."""
    return dict(zip(delta, torch._foreach_mul(list(delta.values()), factor), strict=True))


def _stacked(deltas: Sequence[Delta], key: str) -> torch.Tensor:
    return torch.stack([d[key] for d in deltas])  # (n, *shape)


def coordinate_median(deltas: Sequence[Delta]) -> Delta:
    """Coordinate-wise median (mean of the two middle values when the count is even)."""
    n = len(deltas)
    out: Delta = {}
    for k in deltas[0]:
        s = _stacked(deltas, k).sort(dim=0).values
        out[k] = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    return out


def trimmed_mean(deltas: Sequence[Delta], beta: float) -> Delta:
    """Coordinate-wise mean after dropping the ⌊β·n⌋ smallest and largest values.

    The cut is capped so that at least one value per coordinate remains.
    """
    n = len(deltas)
    cut = min(int(beta * n), (n - 1) // 2)
    return {k: _stacked(deltas, k).sort(dim=0).values[cut : n - cut].mean(dim=0) for k in deltas[0]}


# --- metrics -----------------------------------------------------------------------------


def decide(p: Proposal, weight: float | None = None, norm: float | None = None, reason: str | None = None) -> Decision:
    """The decision about ``p``: accepted with ``weight``, or rejected for ``reason``.

    ``norm`` defaults to the proposal's global norm.
    """
    return Decision(
        agent=p.agent,
        level=p.level,
        tick=p.tick,
        accepted=reason is None,
        reason=reason or "",
        norm=global_norm(p.delta) if norm is None else norm,
        weight=weight,
        quality=p.quality,
        reputation=p.reputation,
    )


def summarize(strategy: str, update: Delta | None, decisions: list[Decision], failures: Sequence[Failure]) -> Aggregate:
    """The result of a tick's aggregation, with tick-level metrics counted from ``decisions``."""
    accepted = sum(d.accepted for d in decisions)
    metrics = {
        "strategy": strategy,
        "n_proposals": len(decisions),
        "n_accepted": accepted,
        "n_rejected": len(decisions) - accepted,
        "n_failures": len(failures),
        "failures": [repr(f) if isinstance(f, BaseException) else str(f) for f in failures],
        "norm": None if update is None else global_norm(update),
    }
    return Aggregate(update, decisions, metrics)


def _no_update(strategy: str, proposals: Sequence[Proposal], failures: Sequence[Failure], reason: str) -> Aggregate:
    res = summarize(strategy, None, [decide(p, weight=0.0, reason=reason) for p in proposals], failures)
    return dataclasses.replace(res, metrics=res.metrics | {"reason": reason})


# --- strategies --------------------------------------------------------------------------


@final
class Mean(Stateless):
    """Equal-weight mean of all proposals (FedAvg with equal client sizes)."""

    name = "mean"

    def aggregate(self, tick: int, proposals: Sequence[Proposal], failures: Sequence[Failure] = ()) -> Aggregate:
        if not proposals:
            return _no_update(self.name, proposals, failures, "no proposals")
        n = len(proposals)
        update = weighted_mean([p.delta for p in proposals], [1.0] * n)
        return summarize(self.name, update, [decide(p, 1.0 / n) for p in proposals], failures)


@final
class Weighted(Stateless):
    """Mean weighted by quality × reputation (DESIGN.md §3); negative weights count as 0."""

    name = "weighted"

    def aggregate(self, tick: int, proposals: Sequence[Proposal], failures: Sequence[Failure] = ()) -> Aggregate:
        weights = [max(p.quality, 0.0) * max(p.reputation, 0.0) for p in proposals]
        if not proposals or sum(weights) <= 0:
            return _no_update(self.name, proposals, failures, "no proposals" if not proposals else "total weight is zero")
        total = sum(weights)
        update = weighted_mean([p.delta for p in proposals], weights)
        decisions = [decide(p, w / total) for p, w in zip(proposals, weights, strict=True)]
        return summarize(self.name, update, decisions, failures)


@final
class Median(Stateless):
    """Coordinate-wise median: one arbitrary outlier cannot move it far (Yin et al. 2018)."""

    name = "median"

    def aggregate(self, tick: int, proposals: Sequence[Proposal], failures: Sequence[Failure] = ()) -> Aggregate:
        if not proposals:
            return _no_update(self.name, proposals, failures, "no proposals")
        update = coordinate_median([p.delta for p in proposals])
        n = len(proposals)
        return summarize(self.name, update, [decide(p, 1.0 / n) for p in proposals], failures)


@final
class TrimmedMean(Stateless):
    """Coordinate-wise mean without the ⌊β·n⌋ extremes at each end (Flower's FedTrimmedAvg)."""

    def __init__(self, beta: float = 0.2) -> None:
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"trim (beta) must be in [0, 0.5), got {beta}")
        self.beta = beta
        self.name = f"trimmed_mean({beta:g})"

    def aggregate(self, tick: int, proposals: Sequence[Proposal], failures: Sequence[Failure] = ()) -> Aggregate:
        if not proposals:
            return _no_update(self.name, proposals, failures, "no proposals")
        update = trimmed_mean([p.delta for p in proposals], self.beta)
        n = len(proposals)
        return summarize(self.name, update, [decide(p, 1.0 / n) for p in proposals], failures)


@final
class Clipped:
    """Scale every proposal down to global L2 norm ≤ ``max_norm``, then delegate.

    With ``by_reputation`` the bound is per agent, ``max_norm · clamp(reputation, 0, 1)``:
    an agent's influence grows with its track record (DESIGN.md §3, reputation).
    """

    def __init__(self, inner: Aggregator, max_norm: float, by_reputation: bool = False) -> None:
        if not max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.inner, self.max_norm, self.by_reputation = inner, max_norm, by_reputation
        self.name = f"clipped({inner.name}, {max_norm:g}{', by reputation' if by_reputation else ''})"

    def bound(self, p: Proposal) -> float:
        """The largest norm proposal ``p`` keeps."""
        return self.max_norm * min(1.0, max(0.0, p.reputation)) if self.by_reputation else self.max_norm

    def aggregate(self, tick: int, proposals: Sequence[Proposal], failures: Sequence[Failure] = ()) -> Aggregate:
        norms = [global_norm(p.delta) for p in proposals]
        scales = [clip_scale(n, self.bound(p)) for n, p in zip(norms, proposals, strict=True)]
        clipped = [
            dataclasses.replace(p, delta=scaled(p.delta, s)) if s < 1.0 else p
            for p, s in zip(proposals, scales, strict=True)
        ]
        res = self.inner.aggregate(tick, clipped, failures)
        decisions = [
            dataclasses.replace(d, norm=n, clip_scale=s, weight=None if d.weight is None else d.weight * s)
            for d, n, s in zip(res.decisions, norms, scales, strict=True)
        ]
        return dataclasses.replace(res, decisions=decisions, metrics=res.metrics | {"strategy": self.name})

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.inner.load_state_dict(state)
