"""Validation: reject malformed or implausible proposals before they are aggregated.

A proposal is rejected — with a reason the ledger keeps — when its level is not the one
being aggregated, its keys or tensor shapes differ from the reference, any value is NaN or
infinite, its global L2 norm exceeds ``reject_norm``, or it exceeds ``reject_norm_ratio``
times the median norm of the tick's well-formed proposals (a scale-free outlier test: as long
as most proposals are honest, the median norm is an honest one, whatever the attackers send). This is the "a NaN proposal is
rejected and logged, the run goes on" rule of issue 3, and the first line of defence that
robust aggregation (median, trimmed mean) backs up. The reference level and shapes are those given to
:class:`Validated`, or else the most common level and key/shape signature among the tick's
proposals, so one malformed proposal cannot redefine what "well-formed" means.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from typing import final

import torch

from lorahive.mechanisms.aggregation import (
    Aggregate,
    Aggregator,
    Decision,
    Delta,
    Failure,
    Proposal,
    decide,
    global_norm,
    key_norms,
    summarize,
)

__all__ = ["Shapes", "Validated", "median_norm", "reference_level", "reference_shapes", "validate_proposal"]

#: Expected tensor shape per parameter name.
Shapes = dict[str, tuple[int, ...]]


def _signature(delta: Delta) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple(sorted((k, tuple(t.shape)) for k, t in delta.items()))


def reference_shapes(proposals: Sequence[Proposal]) -> Shapes:
    """The most common key/shape signature among ``proposals`` (the earliest on a tie)."""
    if not proposals:
        return {}
    counts = Counter(_signature(p.delta) for p in proposals)
    return dict(counts.most_common(1)[0][0])


def reference_level(proposals: Sequence[Proposal]) -> str | None:
    """The most common level among ``proposals`` (the earliest on a tie)."""
    return Counter(p.level for p in proposals).most_common(1)[0][0] if proposals else None


def _shape_reason(delta: Delta, shapes: Shapes) -> str | None:
    missing, extra = sorted(set(shapes) - set(delta)), sorted(set(delta) - set(shapes))
    if missing:
        return f"missing keys: {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else "")
    if extra:
        return f"unexpected keys: {', '.join(extra[:3])}" + (" ..." if len(extra) > 3 else "")
    for k, t in delta.items():
        if tuple(t.shape) != shapes[k]:
            return f"shape mismatch in {k}: {tuple(t.shape)} != expected {shapes[k]}"
    return None


def median_norm(proposals: Sequence[Proposal], shapes: Shapes) -> float | None:
    """The median global norm of the proposals that are finite and shaped like ``shapes``."""
    norms = sorted(
        n for n in (global_norm(p.delta) for p in proposals if _shape_reason(p.delta, shapes) is None) if math.isfinite(n)
    )
    if not norms:
        return None
    n = len(norms)
    return norms[n // 2] if n % 2 else (norms[n // 2 - 1] + norms[n // 2]) / 2


def validate_proposal(
    p: Proposal, shapes: Shapes, level: str | None = None, reject_norm: float | None = None, ratio_bound: tuple[float, float] | None = None
) -> tuple[str | None, float | None]:
    """Check one proposal; return (reason it is rejected or None, its global norm or None).

    ``ratio_bound`` is (ratio, median norm): reject norms above their product.
    """
    per_key = key_norms(p.delta)  # one read-back; a NaN/inf anywhere makes its tensor's norm non-finite
    bad = next((k for k, v in per_key.items() if not math.isfinite(v)), None)
    norm = None if bad is not None else math.sqrt(sum(v * v for v in per_key.values()))
    if level is not None and p.level != level:
        return f"level {p.level!r} is not the level being aggregated ({level!r})", norm
    reason = _shape_reason(p.delta, shapes)
    if reason is not None:
        return reason, norm
    if bad is not None or norm is None:
        return f"non-finite values (NaN/inf) in {bad}", None
    if reject_norm is not None and norm > reject_norm:
        return f"norm {norm:.4g} exceeds reject_norm {reject_norm:g}", norm
    if ratio_bound is not None and norm > ratio_bound[0] * ratio_bound[1]:
        return f"norm {norm:.4g} exceeds reject_norm_ratio {ratio_bound[0]:g} × the tick's median norm {ratio_bound[1]:.4g}", norm
    return None, norm


@final
class Validated:
    """Drop invalid proposals (recording why), aggregate the rest with ``inner``.

    Returns no update when no proposal passes.
    """

    def __init__(
        self, inner: Aggregator, reject_norm: float | None = None, shapes: Shapes | None = None, level: str | None = None, reject_norm_ratio: float | None = None
    ) -> None:
        if reject_norm is not None and not reject_norm > 0:
            raise ValueError(f"reject_norm must be > 0, got {reject_norm}")
        if reject_norm_ratio is not None and not reject_norm_ratio >= 1:
            raise ValueError(f"reject_norm_ratio must be >= 1, got {reject_norm_ratio}")
        self.inner, self.reject_norm, self.shapes, self.level = inner, reject_norm, shapes, level
        self.reject_norm_ratio = reject_norm_ratio
        self.name = f"validated({inner.name})"

    def aggregate(self, tick: int, proposals: Sequence[Proposal], failures: Sequence[Failure] = ()) -> Aggregate:
        shapes = self.shapes if self.shapes is not None else reference_shapes(proposals)
        level = self.level if self.level is not None else reference_level(proposals)
        median = median_norm(proposals, shapes) if self.reject_norm_ratio is not None else None
        bound = None if median is None or self.reject_norm_ratio is None else (self.reject_norm_ratio, median)
        checks = [validate_proposal(p, shapes, level, self.reject_norm, bound) for p in proposals]
        passed = [p for p, (reason, _) in zip(proposals, checks, strict=True) if reason is None]
        inner = self.inner.aggregate(tick, passed, failures) if passed else None
        inner_decisions = iter(inner.decisions if inner is not None else ())
        decisions: list[Decision] = []
        for p, (reason, norm) in zip(proposals, checks, strict=True):
            if reason is None:
                decisions.append(next(inner_decisions))
            else:
                decisions.append(dataclasses.replace(decide(p, weight=0.0, norm=0.0, reason=reason), norm=norm))
        res = summarize(self.name, None if inner is None else inner.update, decisions, failures)
        metrics = (inner.metrics if inner is not None else {}) | res.metrics
        if not passed:
            metrics["reason"] = "no proposal passed validation"
        return dataclasses.replace(res, metrics=metrics)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.inner.load_state_dict(state)
