"""The HTML report of a run: one self-contained file, every plot a base64 PNG inside it.

``write_report(run_dir, others)`` reads the run's ``metrics.json`` and ``ledger.sqlite``
(and the ``metrics.json`` of other runs to compare with, e.g. the baselines of a stream)
and writes ``run_dir/report.html`` with one section each:

    summary            method, ticks, ACC/BWT/FWT, retention perplexity, wall time
    quality            query quality per agent over ticks (ledger)
    accuracy-matrix    the stream's accuracy matrix R as a heatmap
    cl-metrics         ACC / BWT / FWT of this run against the compared runs
    level-influence    per task type, each level's Shapley share
    agent-influence    each agent's share of the swarm level's change
    acceptance         proposals accepted / rejected per tick (ledger)
    health             each health metric over ticks in its healthy / warning / critical
                       bands, and the last tick's overall status (ledger, mechanism:health)
    migrations         migrations per tick per channel, bypass ones hatched, and totals per
                       channel (ledger, mechanism:bandwidth)
    decay              screened vs free patterns per level, and the norm decay removed per
                       tick (ledger, mechanism:screening)
    inertia            each level's inertia and step size over ticks (ledger, mechanism:inertia)

A section whose data the run does not have (R without a stream, say, or no health events)
says so instead of showing a plot. The last four are drawn by ``report_mechanisms.py``.
A stages run (docs/stages.md) gets its own sections instead (:data:`STAGES_SECTIONS`:
per-stage budgets, behaviour, attribution, overlaps, and other stages runs compared), from
``report_stages.py``. Plots use matplotlib's Agg backend: no display is needed.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lorahive.observe import report_mechanisms as rm  # noqa: E402
from lorahive.observe import report_stages as rs  # noqa: E402
from lorahive.observe.compare import Summary, load_summary  # noqa: E402
from lorahive.observe.ledger import Ledger  # noqa: E402

__all__ = ["SECTIONS", "STAGES_SECTIONS", "render_report", "write_report"]

SECTIONS = (
    "summary",
    "quality",
    "accuracy-matrix",
    "cl-metrics",
    "level-influence",
    "agent-influence",
    "acceptance",
    *rm.MECHANISM_SECTIONS,
)
STAGES_SECTIONS = rs.STAGE_SECTIONS


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------------- plots
def quality_plot(rows: Sequence[dict[str, Any]]) -> str:
    """Mean query quality of each agent's task per tick."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    by_agent: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        by_agent.setdefault(r["agent"], {}).setdefault(r["tick"], []).append(r["quality"])
    for agent, ticks in sorted(by_agent.items()):
        xs = sorted(ticks)
        ax.plot(xs, [sum(ticks[t]) / len(ticks[t]) for t in xs], marker="o", ms=3, label=agent)
    ax.set(
        xlabel="tick",
        ylabel="query quality",
        ylim=(-0.05, 1.05),
        title="quality per agent over ticks",
    )
    ax.legend(fontsize=7, ncol=4)
    return _png(fig)


def matrix_plot(r: Sequence[Sequence[float | None]], tasks: Sequence[str]) -> str:
    """R as a heatmap: row 0 before learning, row i after learning stage i."""
    fig, ax = plt.subplots(figsize=(1.2 * len(tasks) + 2, 0.6 * len(r) + 1.5))
    vals = [[math.nan if v is None else v for v in row] for row in r]
    im = ax.imshow(vals, vmin=0, vmax=1, cmap="viridis")
    for i, row in enumerate(vals):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    color="w" if v < 0.6 else "k",
                    fontsize=8,
                )
    ax.set_xticks(range(len(tasks)), list(tasks), rotation=30)
    ax.set_yticks(range(len(vals)), ["before"] + [f"after {t}" for t in tasks[: len(vals) - 1]])
    ax.set_title("accuracy matrix R (task j after stage i)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _png(fig)


def cl_plot(runs: Sequence[Summary]) -> str:
    """ACC, BWT, FWT side by side for every run that has them."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    keys = ("ACC", "BWT", "FWT")
    width = 0.8 / max(1, len(runs))
    for k, s in enumerate(runs):
        vals = [s.cl.get(key) for key in keys]
        xs = [i + k * width for i in range(len(keys))]
        ax.bar(xs, [0.0 if v is None or math.isnan(v) else v for v in vals], width, label=s.label)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(keys))], list(keys))
    ax.set_title("continual-learning metrics")
    ax.legend(fontsize=7)
    return _png(fig)


def shapley_plot(levels: dict[str, dict[str, float]]) -> str:
    """Per task type, grouped bars of each level's Shapley share."""
    types = list(levels)
    names = list(next(iter(levels.values())))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / max(1, len(names))
    for k, lv in enumerate(names):
        ax.bar(
            [i + k * width for i in range(len(types))],
            [levels[t][lv] for t in types],
            width,
            label=lv,
        )
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(types))], types)
    ax.set(ylabel="Shapley share", title="level influence on held-out answers")
    ax.legend(fontsize=7, ncol=len(names))
    return _png(fig)


def agents_plot(shares: dict[str, float]) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.0))
    names = sorted(shares)
    ax.bar(names, [shares[n] for n in names], color="tab:orange")
    ax.set(ylabel="share of swarm ΔW", title="where the swarm level's change comes from")
    ax.tick_params(axis="x", rotation=30)
    return _png(fig)


def acceptance_plot(rows: Sequence[dict[str, Any]]) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.0))
    ticks = [r["tick"] for r in rows]
    acc = [r["accepted"] or 0 for r in rows]
    rej = [r["rejected"] or 0 for r in rows]
    ax.bar(ticks, acc, label="accepted", color="tab:green")
    ax.bar(ticks, rej, bottom=acc, label="rejected", color="tab:red")
    ax.set(xlabel="tick", ylabel="proposals", title="proposal acceptance over time")
    ax.legend(fontsize=7)
    return _png(fig)


# ---------------------------------------------------------------------- html
def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}">\n<h2>{html.escape(title)}</h2>\n{body}\n</section>'


def _none(why: str) -> str:
    return f'<p class="empty">{html.escape(why)}</p>'


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _summary_table(runs: Sequence[Summary]) -> str:
    head = ["run", "method", "ticks", "ACC", "BWT", "FWT", "ppl before", "ppl after", "wall s"]
    rows = [
        [
            s.label,
            s.method,
            s.ticks,
            s.cl.get("ACC"),
            s.cl.get("BWT"),
            s.cl.get("FWT"),
            s.ppl_before,
            s.ppl_after,
            s.wall_time_s,
        ]
        for s in runs
    ]
    return _table(head, rows)


_EMPTY = {
    "health": "no health events in the ledger (no health mechanism in this run)",
    "migrations": "no migrations in the ledger (no bandwidth mechanism, or nothing migrated)",
    "decay": "no screening events in the ledger (no screening mechanism in this run)",
    "inertia": "no inertia events in the ledger (no inertia mechanism in this run)",
}
_MIGRATION_HEAD = ["channel", "migrations", "bypass", "params moved", "mean wait", "truncation"]


def _mechanism_parts(events: list[dict[str, Any]]) -> list[str]:
    """The health, migrations, decay and inertia sections (``report_mechanisms`` draws them)."""
    last = rm.latest(events, "health")
    if last is None:
        health = _none(_EMPTY["health"])
    else:
        overall = str(last["detail"].get("overall"))
        cls = overall if overall in ("healthy", "warning", "critical") else "empty"
        line = f'<p class="{cls}">{html.escape(rm.health_line(events))}</p>'
        health = _img(_png(rm.health_figure(events)), "health") + "\n" + line
    if rm.latest(events, "migrations") is None:
        migrations = _none(_EMPTY["migrations"])
    else:
        rows = [[ch, *t.values()] for ch, t in rm.migration_totals(events).items()]
        table = _table(_MIGRATION_HEAD, rows)
        migrations = _img(_png(rm.migrations_figure(events)), "migrations") + "\n" + table
    extra = "".join(f"<p>{html.escape(line)}</p>" for line in rm.dynamics_lines(events))
    if extra:
        migrations = f"{migrations}\n{extra}"
    decay = _img(_png(rm.decay_figure(events)), "decay") if rm.latest(events, "decay") else None
    inertia = (
        _img(_png(rm.inertia_figure(events)), "inertia") if rm.latest(events, "inertia") else None
    )
    return [
        _section("health", "swarm health over ticks", health),
        _section("migrations", "migrations between levels", migrations),
        _section("decay", "screening and decay per level", decay or _none(_EMPTY["decay"])),
        _section("inertia", "inertia and step size per level", inertia or _none(_EMPTY["inertia"])),
    ]


Rows = list[dict[str, Any]]


def _ledger_rows(run_dir: Path, query: int | None) -> tuple[Rows, Rows, Rows]:
    path = run_dir / "ledger.sqlite"
    if not path.is_file():
        return [], [], []
    with Ledger(path) as ledger:
        where = "phase = 'after' AND tick > 0" + (" AND n = ?" if query else "")
        quality = ledger.query(
            f"SELECT tick, agent, quality FROM scores WHERE {where} AND quality IS NOT NULL ORDER BY tick",
            (query,) if query else (),
        )
        acceptance = ledger.acceptance_by_tick()
        events = rm.mechanism_events(ledger)
    return quality, acceptance, events


def _stages_parts(main: Summary, others: Sequence[Summary]) -> list[str]:
    """The sections of a stages run's report; ``others`` (stages runs too) are compared with it."""
    m = main.metrics
    stopped = f"not measured yet: {rs.progress_line(m)}"
    measured = bool(m.get("finished") and m.get("data"))
    stages = m["stages"]
    budgets = _img(_png(rs.budget_figure(stages)), "budgets") if any(st["steps"] for st in stages) else _none("no step taken yet")
    attribution = _table(rs.ATTRIBUTION_HEAD, rs.attribution_rows(m)) + "\n" + _img(_png(rs.shapley_figure({main.label: m})), "attribution")
    runs = {main.label: m, **{o.label: o.metrics for o in others}}
    measured_runs = {k: v for k, v in runs.items() if v.get("data")}
    compare = (
        _table(rs.COMPARE_HEAD, rs.compare_rows(measured_runs)) + "\n" + _img(_png(rs.shapley_figure(measured_runs)), "compare")
        if others and measured_runs
        else _none("no other stages run given (`lorahive report RUN OTHER ...` compares, e.g., the orders of recipes/stages)")
    )
    return [
        _section("summary", "stages: order, steps, budgets", f"<p>{html.escape(rs.progress_line(m))}</p>\n" + _table(rs.SUMMARY_HEAD, rs.summary_rows(m))),
        _section("budgets", "‖ΔW‖ of each stage after every step", budgets),
        _section("behaviour", "behaviour on held-out pairs (every stage off → on)", _table(rs.BEHAVIOUR_HEAD, rs.behaviour_rows(m)) if measured else _none(stopped)),
        _section("attribution", "per-stage attribution (exact Shapley values, nats; drop-one KL)", attribution if measured else _none(stopped)),
        _section("overlap", "overlap of the stages' ΔW (principal angles)", _table(rs.OVERLAP_HEAD, rs.overlap_rows(m)) if measured and m.get("overlap") else _none(stopped if not measured else "fewer than two stages: no pair to compare")),
        _section("compare", "other stages runs", compare),
    ]


def _page(run_dir: Path, parts: list[str]) -> str:
    style = "body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}.empty{color:#777}.healthy{color:#2a2}.warning{color:#c70}.critical{color:#c00}"
    title = f"lorahive report: {html.escape(str(run_dir))}"
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title><style>{style}</style></head>\n<body>\n<h1>{title}</h1>\n'
        + "\n".join(parts)
        + "\n</body></html>\n"
    )


def render_report(run_dir: str | Path, others: Sequence[str | Path] = ()) -> str:
    """The report of ``run_dir`` (compared with ``others``) as one HTML string.

    A stages run is compared with stages runs only; another kind among ``others`` is refused.
    """
    run_dir = Path(run_dir)
    main = load_summary(run_dir)
    runs = [main, *(load_summary(o) for o in others)]
    stages = [rs.is_stages_metrics(s.metrics) for s in runs]
    if any(stages) and not all(stages):
        odd = [str(p) for p, st in zip([run_dir, *others], stages, strict=True) if st != stages[0]]
        kind = "a stages run" if stages[0] else "a swarm run"
        raise ValueError(f"{run_dir} is {kind}; {', '.join(odd)} is not: a report compares runs of one kind")
    if stages[0]:
        return _page(run_dir, _stages_parts(main, runs[1:]))
    m = main.metrics
    quality, acceptance, events = _ledger_rows(run_dir, main.query_size)
    cl = m.get("cl") or {}
    influence = m.get("influence") or {}
    parts = [
        _section("summary", "summary", _summary_table(runs)),
        _section(
            "quality",
            "quality per agent over ticks",
            _img(quality_plot(quality), "quality")
            if quality
            else _none("no per-tick scores in the ledger"),
        ),
        _section(
            "accuracy-matrix",
            "accuracy matrix R",
            _img(matrix_plot(cl["R"], cl["tasks"]), "R")
            if cl.get("R")
            else _none("not a stream run: no accuracy matrix"),
        ),
        _section(
            "cl-metrics",
            "ACC / BWT / FWT",
            _img(cl_plot([s for s in runs if s.cl]), "cl metrics")
            if any(s.cl.get("ACC") is not None for s in runs)
            else _none("no complete accuracy matrix in these runs"),
        ),
        _section(
            "level-influence",
            "level influence (Shapley shares) per task type",
            _img(shapley_plot(influence["levels"]), "levels")
            if influence.get("levels")
            else _none("level influence not measured"),
        ),
        _section(
            "agent-influence",
            "per-agent share of the swarm level",
            _img(agents_plot(influence["agents"]), "agents")
            if influence.get("agents")
            else _none(
                "no accepted swarm proposals to attribute (a baseline, or nothing accepted)"
            ),
        ),
        _section(
            "acceptance",
            "proposal acceptance over time",
            _img(acceptance_plot(acceptance), "acceptance")
            if acceptance
            else _none("no proposals in the ledger"),
        ),
        *_mechanism_parts(events),
    ]
    return _page(run_dir, parts)


def write_report(run_dir: str | Path, others: Sequence[str | Path] = ()) -> Path:
    """Write ``run_dir/report.html``; returns its path."""
    path = Path(run_dir) / "report.html"
    path.write_text(render_report(run_dir, others), encoding="utf-8")
    return path
