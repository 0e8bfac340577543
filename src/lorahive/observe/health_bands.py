"""Healthy / warning / critical bands of the swarm's health metrics, as one data table.

The ``health`` mechanism computes these metrics every tick; the report, ``lorahive
inspect`` and ``metrics.json`` classify them with :func:`status`. The spec's table:

    metric            healthy       warning                  critical
    entropy_ratio     0.8 – 1.2     0.5 – 0.8 or 1.2 – 2.0   < 0.5 or > 2.0
    queue_depth       < 10          10 – 50                  > 50
    wait_time         < 5 ticks     5 – 20 ticks             > 20 ticks
    rejection_rate    < 1 %         1 – 5 %                  > 5 %
    fast_track_rate   5 – 20 %      1 – 5 % or 20 – 40 %     < 1 % or > 40 %
    conflict_rate     < 1 %         1 – 5 %                  > 5 %

Rates are fractions (0.01 is 1 %). Every band is half-open, ``lo <= value < hi``, so a value
on a boundary belongs to the band above it (a queue depth of exactly 10 is a warning, of 50
critical); ``math.inf`` closes the open ends (and ``+inf`` itself falls in the top band).
A missing value (``None`` or NaN: no data yet, e.g. no migration before the first
fast-track) is ``"n/a"``. For a metric kept per level or per channel (a dict),
:func:`metric_status` is the worst of its entries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

__all__ = ["BANDS", "STATUSES", "metric_status", "status", "worst"]

_INF = math.inf

#: metric -> bands (lo, hi, status), half-open [lo, hi), ascending, covering (-inf, inf).
BANDS: dict[str, tuple[tuple[float, float, str], ...]] = {
    "entropy_ratio": (
        (-_INF, 0.5, "critical"),
        (0.5, 0.8, "warning"),
        (0.8, 1.2, "healthy"),
        (1.2, 2.0, "warning"),
        (2.0, _INF, "critical"),
    ),
    "queue_depth": ((-_INF, 10.0, "healthy"), (10.0, 50.0, "warning"), (50.0, _INF, "critical")),
    "wait_time": ((-_INF, 5.0, "healthy"), (5.0, 20.0, "warning"), (20.0, _INF, "critical")),
    "rejection_rate": ((-_INF, 0.01, "healthy"), (0.01, 0.05, "warning"), (0.05, _INF, "critical")),
    "fast_track_rate": (
        (-_INF, 0.01, "critical"),
        (0.01, 0.05, "warning"),
        (0.05, 0.20, "healthy"),
        (0.20, 0.40, "warning"),
        (0.40, _INF, "critical"),
    ),
    "conflict_rate": ((-_INF, 0.01, "healthy"), (0.01, 0.05, "warning"), (0.05, _INF, "critical")),
}

#: Every status, best first; "n/a" (no data) ranks below all and is ignored by :func:`worst`.
STATUSES = ("healthy", "warning", "critical", "n/a")

_RANK = {"healthy": 0, "warning": 1, "critical": 2}


def status(metric: str, value: float | None) -> str:
    """``"healthy"``, ``"warning"`` or ``"critical"`` for ``value`` of ``metric``; ``"n/a"`` if None/NaN."""
    try:
        bands = BANDS[metric]
    except KeyError:
        raise KeyError(f"unknown health metric {metric!r}; known: {', '.join(BANDS)}") from None
    if value is None or math.isnan(value):
        return "n/a"
    for lo, hi, name in bands:
        if lo <= value < hi or value == hi == _INF:
            return name
    raise AssertionError(f"BANDS[{metric!r}] does not cover {value!r}")  # pragma: no cover


def worst(statuses: Iterable[str]) -> str:
    """The worst status: critical > warning > healthy; "n/a" ignored; none but n/a -> "n/a"."""
    best: str | None = None
    for s in statuses:
        if s == "n/a":
            continue
        if s not in _RANK:
            raise ValueError(f"unknown health status {s!r}; known: {', '.join(STATUSES)}")
        if best is None or _RANK[s] > _RANK[best]:
            best = s
    return "n/a" if best is None else best


def metric_status(metric: str, value: float | Mapping[str, float | None] | None) -> str:
    """:func:`status` of a value, or the worst status of a per-level / per-channel dict."""
    if isinstance(value, Mapping):
        return worst(status(metric, v) for v in value.values())
    return status(metric, value)
