"""The mechanisms' side of the report: health, migrations, decay and inertia over ticks.

Every function here takes ledger event rows (``{"tick", "kind", "detail"}``, as
:meth:`Ledger.events` returns them, of any kinds) and picks those it reads:

    mechanism:health      action "health"   metrics, their statuses and the overall one, per tick
    mechanism:bandwidth   action "migrate"  the migrations of a tick (channel, bypass, ...)
    mechanism:screening   action "decay"    screened / free patterns and the norm decayed, per level
    mechanism:inertia     action "inertia"  inertia, density and step size, per level
    mechanism:entropy_budget  action "budget"  entropy ratio and screening-threshold factor, per level
    mechanism:vertical_resonance  action "vertical"  cross-level cosine, mode and learning-rate factors
    mechanism:consensus   action "consensus"  the dominant cluster of proposals, and what moved to the swarm
    mechanism:context_modes  action "route"  each agent's context mode, its centred cosine, the modes' uses
                             action "reinforce"  what each mode took, and the past modes' rehearsal rows
    mechanism:topology    action "watch" / "split" / "merge"  each level's time-scale signals, and a change of the stack

The ``*_figure`` functions return matplotlib figures (``report.py`` embeds them as PNGs);
:func:`health_summary` is what a run's ``metrics.json`` keeps under ``health``. Bands and
statuses come from :mod:`lorahive.observe.health_bands`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

from lorahive.observe.health_bands import BANDS, STATUSES, worst  # noqa: E402
from lorahive.observe.ledger import Ledger  # noqa: E402

__all__ = [
    "EXTRA_KINDS",
    "KINDS",
    "MECHANISM_SECTIONS",
    "STATUS_COLORS",
    "decay_figure",
    "dynamics_lines",
    "health_figure",
    "health_line",
    "health_summary",
    "inertia_figure",
    "latest",
    "mechanism_events",
    "migration_totals",
    "migrations_figure",
    "tick_seconds",
]

#: Report section -> (ledger event kind, action) it reads.
KINDS: dict[str, tuple[str, str]] = {
    "health": ("mechanism:health", "health"),
    "migrations": ("mechanism:bandwidth", "migrate"),
    "decay": ("mechanism:screening", "decay"),
    "inertia": ("mechanism:inertia", "inertia"),
}
MECHANISM_SECTIONS = tuple(KINDS)
#: Events a section's figure also reads (the entropy budget's factors join the decay figure).
EXTRA_KINDS: dict[str, tuple[str, str]] = {
    "budget": ("mechanism:entropy_budget", "budget"),
    "vertical": ("mechanism:vertical_resonance", "vertical"),  # joins the inertia figure
    "consensus": ("mechanism:consensus", "consensus"),  # a line beside the migrations
    "context_modes": ("mechanism:context_modes", "route"),  # a line: the router's choices
    "reinforce": ("mechanism:context_modes", "reinforce"),  # joins that line: past modes' rehearsal
    "split": ("mechanism:topology", "split"),  # a line: the stack's changes
    "merge": ("mechanism:topology", "merge"),
}

STATUS_COLORS = {
    "healthy": "tab:green",
    "warning": "tab:orange",
    "critical": "tab:red",
    "n/a": "0.5",
}


def mechanism_events(ledger: Ledger) -> list[dict[str, Any]]:
    """The ledger's events of every kind in :data:`KINDS`, each kind in tick order."""
    kinds = dict.fromkeys(kind for kind, _ in (*KINDS.values(), *EXTRA_KINDS.values()))  # topology's two actions share a kind
    return [row for kind in kinds for row in ledger.events(kind)]


def _of(events: Iterable[Mapping[str, Any]], section: str) -> list[Mapping[str, Any]]:
    kind, action = KINDS[section] if section in KINDS else EXTRA_KINDS[section]
    return [
        e
        for e in events
        if e.get("kind") == kind and (e.get("detail") or {}).get("action") == action
    ]


def latest(events: Iterable[Mapping[str, Any]], section: str) -> Mapping[str, Any] | None:
    """The last event row of a section's kind (``"health"``, ``"migrations"``, ...), or None."""
    rows = _of(events, section)
    return rows[-1] if rows else None


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _series(
    rows: Iterable[Mapping[str, Any]], key: str, field: str | None = None
) -> dict[str, tuple[list[int], list[float]]]:
    """``detail[key]`` over ticks: one series per entry of a dict (its ``field`` if given), else one."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for r in rows:
        value = r["detail"].get(key)
        if value is None:  # no data at this tick (fast_track_rate before any migration)
            continue
        entries = value.items() if isinstance(value, Mapping) else [(key, value)]
        for name, v in entries:
            xs, ys = out.setdefault(str(name), ([], []))
            xs.append(int(r["tick"]))
            ys.append(_num(v.get(field) if field and isinstance(v, Mapping) else v))
    return out


def _lines(
    ax: Axes, series: Mapping[str, tuple[list[int], list[float]]], style: str = "-", **kw: Any
) -> None:
    for k, (name, (xs, ys)) in enumerate(series.items()):
        ax.plot(xs, ys, style, marker="o", ms=2.5, color=f"C{k}", label=name, **kw)


# ---------------------------------------------------------------------- health
def _window(metric: str, values: list[float]) -> tuple[float, float]:
    """Y range: the data, the healthy band's finite ends (and 0 below an open one), padded."""
    finite = [v for v in values if math.isfinite(v)]
    healthy = [(lo, hi) for lo, hi, s in BANDS.get(metric, ()) if s == "healthy"]
    ends = [x if math.isfinite(x) else 0.0 for lo, hi in healthy for x in (lo, hi) if x != math.inf]
    pts = finite + ends or [0.0, 1.0]
    lo, hi = min(pts), max(pts)
    pad = 0.08 * (hi - lo) if hi > lo else 0.5 * (abs(hi) or 1.0)
    return (max(lo - pad, 0.0) if lo >= 0 else lo - pad), hi + pad


def health_figure(events: Iterable[Mapping[str, Any]]) -> Figure:
    """One small subplot per health metric over ticks, the healthy/warning/critical bands shaded."""
    rows = _of(events, "health")
    metrics = list(BANDS) + sorted(
        {m for r in rows for m in r["detail"].get("metrics", {})} - set(BANDS)
    )
    ncols = 3
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(10, 2.6 * nrows), squeeze=False)
    last = rows[-1]["detail"] if rows else {}
    for ax, metric in zip(axes.flat, metrics, strict=False):
        series = _series(
            [{"tick": r["tick"], "detail": r["detail"].get("metrics") or {}} for r in rows], metric
        )
        _lines(ax, series)
        ymin, ymax = _window(metric, [v for _, ys in series.values() for v in ys])
        for lo, hi, s in BANDS.get(metric, ()):
            if max(lo, ymin) < min(hi, ymax):
                ax.axhspan(max(lo, ymin), min(hi, ymax), color=STATUS_COLORS[s], alpha=0.15, lw=0)
        ax.set_ylim(ymin, ymax)
        if not any(math.isfinite(v) for _, ys in series.values() for v in ys):
            ax.text(
                0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.4"
            )
        if metric.endswith("_rate"):
            ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=1))
        s = str(last.get("status", {}).get(metric, "n/a"))
        ax.set_title(f"{metric}: {s}", fontsize=9, color=STATUS_COLORS.get(s, "k"))
        ax.set_xlabel("tick", fontsize=8)
        ax.set_ylabel("ticks" if metric == "wait_time" else "", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(series) > 1:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(f"health over ticks (last tick: {last.get('overall', 'n/a')})", fontsize=10)
    fig.tight_layout()
    return fig


def health_line(events: Iterable[Mapping[str, Any]]) -> str:
    """The last tick's overall status and the metrics that are not healthy, as one sentence."""
    row = latest(events, "health")
    if row is None:
        return "no health events"
    d = row["detail"]
    statuses = d.get("status") or {}
    order = [m for m in BANDS if m in statuses] + sorted(set(statuses) - set(BANDS))
    off = [f"{m} {statuses[m]}" for m in order if statuses[m] != "healthy"]
    rest = "; every metric healthy" if not off else " (" + ", ".join(off) + ")"
    return f"last tick ({row['tick']}): overall {d.get('overall', 'n/a')}{rest}"


# ---------------------------------------------------------------------- migrations
def migration_totals(events: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per channel over the run: migrations, bypass ones, parameters moved, mean wait and truncation."""
    acc: dict[str, dict[str, float]] = {}
    for r in _of(events, "migrations"):
        for m in r["detail"].get("migrations") or ():
            t = acc.setdefault(
                str(m.get("channel")),
                {"migrations": 0, "bypass": 0, "params": 0, "wait": 0.0, "truncation": 0.0},
            )
            t["migrations"] += 1
            t["bypass"] += bool(m.get("bypass"))
            t["params"] += int(m.get("params") or 0)
            t["wait"] += float(m.get("waited") or 0)
            t["truncation"] += float(m.get("truncation") or 0.0)
    return {
        ch: {
            "migrations": t["migrations"],
            "bypass": t["bypass"],
            "params": t["params"],
            "mean_wait": t["wait"] / t["migrations"],
            "mean_truncation": t["truncation"] / t["migrations"],
        }
        for ch, t in sorted(acc.items())
    }


def migrations_figure(events: Iterable[Mapping[str, Any]]) -> Figure:
    """Migrations per tick, stacked by channel; the bypass (fast-track) share of each hatched."""
    rows = _of(events, "migrations")
    channels = sorted(
        {str(m.get("channel")) for r in rows for m in r["detail"].get("migrations") or ()}
    )
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ticks = [int(r["tick"]) for r in rows]
    bottom = [0] * len(rows)
    for k, ch in enumerate(channels):
        for bypass in (False, True):
            n = [
                sum(
                    str(m.get("channel")) == ch and bool(m.get("bypass")) == bypass
                    for m in r["detail"].get("migrations") or ()
                )
                for r in rows
            ]
            hatch = "///" if bypass else None
            ax.bar(
                ticks,
                n,
                0.8,
                bottom=bottom,
                color=f"C{k}",
                hatch=hatch,
                edgecolor="k" if bypass else None,
                lw=0,
            )
            bottom = [b + x for b, x in zip(bottom, n, strict=True)]
    handles = [Patch(color=f"C{k}", label=ch) for k, ch in enumerate(channels)]
    handles.append(
        Patch(facecolor="white", edgecolor="k", hatch="///", label="bypass (fast track)")
    )
    ax.legend(handles=handles, fontsize=7)
    ax.set(xlabel="tick", ylabel="migrations", title="migrations per tick per channel")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


# ---------------------------------------------------------------------- decay, inertia
def dynamics_lines(events: Iterable[Mapping[str, Any]]) -> list[str]:
    """One line each for the entropy budget, vertical resonance, consensus, context modes and topology, when they ran."""
    events = list(events)
    lines = []
    budget = latest(events, "budget")
    if budget is not None:
        levels = budget["detail"].get("levels") or {}
        per = ", ".join(f"{lv} ×{v.get('scale', 1.0):.3g} (ratio {_num(v.get('entropy_ratio')):.2f})" for lv, v in levels.items())
        lines.append(f"entropy budget at tick {budget['tick']}: screening thresholds {per}")
    vertical = _of(events, "vertical")
    if vertical:
        modes = [str(r["detail"].get("mode")) for r in vertical]
        counts = ", ".join(f"{m} {modes.count(m)}" for m in ("resonant", "dissonant", "neutral"))
        lines.append(f"vertical resonance over {len(vertical)} ticks: {counts}")
    consensus = _of(events, "consensus")
    if consensus:
        found = [r for r in consensus if r["detail"].get("found")]
        handed = sum(bool(r["detail"].get("to_slower")) for r in found)
        lines.append(f"consensus in {len(found)} of {len(consensus)} ticks with proposals; {handed} hand-overs to the slower level")
    routes = _of(events, "context_modes")
    if routes:
        last = routes[-1]["detail"]
        uses = [int(u) for u in last.get("uses") or []]
        chosen = ", ".join(f"{a} → {m}" for a, m in (last.get("modes") or {}).items())
        line = f"context modes over {len(routes)} ticks: {sum(u > 0 for u in uses)} of {len(uses)} modes used ({', '.join(map(str, uses))} tasks); tick {routes[-1]['tick']}: {chosen}"
        rehearsed = [r["detail"]["rehearsed"] for r in _of(events, "reinforce") if r["detail"].get("rehearsed")]
        if rehearsed:
            line += f"; past modes rehearsed in {len(rehearsed)} ticks on {sum(int(n) for d in rehearsed for n in d.values())} replayed rows"
        lines.append(line)
    changes = sorted([*_of(events, "split"), *_of(events, "merge")], key=lambda r: r["tick"])
    if changes:
        told = [f"{r['detail'].get('new')} from {r['detail'].get('level')}" if r["detail"]["action"] == "split" else f"{r['detail'].get('gone')} into {r['detail'].get('keep')}" for r in changes]
        lines.append(f"topology: {len(changes)} changes of the stack (" + "; ".join(f"tick {r['tick']} {r['detail']['action']} {t}" for r, t in zip(changes, told, strict=True)) + ")")
    return lines


def decay_figure(events: Iterable[Mapping[str, Any]]) -> Figure:
    """Screened (solid) vs free (dashed) patterns per level, and the norm decay removed, per tick;
    with the entropy budget on, a third panel: its screening-threshold factor per level."""
    events = list(events)
    rows = _of(events, "decay")
    budget = _of(events, "budget")
    fig, axes = plt.subplots(1, 3 if budget else 2, figsize=(15 if budget else 10, 3.2))
    left, right = axes[0], axes[1]
    if budget:
        _lines(axes[2], _series(budget, "levels", "scale"))
        axes[2].set_yscale("log")
        axes[2].set(xlabel="tick", ylabel="× thresholds", title="entropy budget: screening-threshold factor")
        axes[2].legend(fontsize=6)
    _lines(left, _series(rows, "levels", "screened"))
    _lines(left, {f"{k} free": xy for k, xy in _series(rows, "levels", "free").items()}, "--")
    left.set(xlabel="tick", ylabel="patterns", title="screened (solid) vs free (dashed) per level")
    left.legend(fontsize=6, ncol=2)
    moved = _series(rows, "levels", "moved")
    _lines(right, moved)
    if len(moved) > 1:
        total = [
            math.fsum(
                float(v.get("moved") or 0.0) for v in (r["detail"].get("levels") or {}).values()
            )
            for r in rows
        ]
        right.plot([int(r["tick"]) for r in rows], total, "k-", lw=1, label="all levels")
    right.set(xlabel="tick", ylabel="Frobenius norm removed", title="norm decayed per tick")
    right.legend(fontsize=6)
    fig.tight_layout()
    return fig


def inertia_figure(events: Iterable[Mapping[str, Any]]) -> Figure:
    """Each level's inertia and step size over ticks; with vertical resonance on, a third panel:
    the levels' mean cosine and each level's learning-rate factor."""
    events = list(events)
    rows = _of(events, "inertia")
    vertical = _of(events, "vertical")
    fig, axes = plt.subplots(1, 3 if vertical else 2, figsize=(15 if vertical else 10, 3.2))
    left, right = axes[0], axes[1]
    if vertical:
        ax = axes[2]
        _lines(ax, _series(vertical, "lr_factor"))
        ax.plot([int(r["tick"]) for r in vertical], [_num(r["detail"].get("cosine")) for r in vertical], "k--", lw=1, label="cosine")
        ax.axhline(0.0, color="0.7", lw=0.5)
        ax.set(xlabel="tick", ylabel="factor / cosine", title="vertical resonance: lr factor per level")
        ax.legend(fontsize=6)
    _lines(left, _series(rows, "levels", "inertia"))
    left.set(xlabel="tick", ylabel="inertia", title="inertia per level")
    left.legend(fontsize=6)
    steps = _series(rows, "levels", "step_size")
    _lines(right, steps)
    pos = [v for _, ys in steps.values() for v in ys if math.isfinite(v)]
    if pos and min(pos) > 0 and max(pos) / min(pos) > 50:
        right.set_yscale("log")
    right.set(xlabel="tick", ylabel="step size", title="step size per level")
    right.legend(fontsize=6)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- metrics.json
def health_summary(events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """What ``metrics.json`` keeps under ``health``, from a run's ledger events (any kinds).

    ``{"last": <last tick's metrics>, "status": <their statuses>, "overall": str, "ticks": <ticks
    with a health event>, "worst": {metric: worst status over the run}, "migrations": {channel:
    count}, "fast_tracked": <bypass migrations>}``. Without health events ``last`` and
    ``status`` are ``{}`` and ``overall`` is ``"n/a"``; statuses outside
    :data:`~lorahive.observe.health_bands.STATUSES` are ignored.
    """
    events = list(events)
    rows = _of(events, "health")
    last = dict(rows[-1]["detail"]) if rows else {}
    seen: dict[str, list[str]] = {}
    for r in rows:
        for metric, s in (r["detail"].get("status") or {}).items():
            seen.setdefault(metric, []).append(s)
    totals = migration_totals(events)
    return {
        "last": dict(last.get("metrics") or {}),
        "status": dict(last.get("status") or {}),
        "overall": str(last.get("overall", "n/a")),
        "ticks": len(rows),
        "worst": {m: worst(s for s in ss if s in STATUSES) for m, ss in seen.items()},
        "migrations": {ch: int(t["migrations"]) for ch, t in totals.items()},
        "fast_tracked": int(sum(t["bypass"] for t in totals.values())),
    }


def tick_seconds(events: list[dict[str, Any]]) -> dict[str, float]:
    """What ``metrics.json`` keeps under ``tick_seconds``: the mean wall seconds per tick of each phase
    (and each mechanism, ``phase:name``) over a run's ``tick_seconds`` events, largest first."""
    totals: dict[str, float] = {}
    for e in events:
        for k, v in e["detail"].items():
            totals[k] = totals.get(k, 0.0) + float(v)
    n = max(len(events), 1)
    return {k: round(v / n, 4) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
