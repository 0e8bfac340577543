"""A stages run's side of the report and of ``lorahive inspect``: budgets, behaviour, attribution, overlaps.

Everything here reads a stages run's ``metrics.json`` (runtime/stages.py writes it: the
stages' step records at every checkpoint, then behaviour and attribution once the run is
measured, with ``finished: true``). ``report.py`` turns the rows and figures into sections:

    summary       each stage: objective, data, levels, steps done, ‖ΔW‖ against its cap, clipped steps
    budgets       ‖ΔW‖ of each stage after every step (what the step asked for dotted), its cap dashed
    behaviour     per data set, held-out log p(chosen), log p(rejected), margin, preference and
                  label accuracy, every stage off → every stage on
    attribution   per data set, each stage's exact Shapley value on log p(chosen) and on the margin,
                  its share and the drop-one KL; bars of both
    overlap       principal angles between every two stages' ΔW (the interference figure)
    compare       other stages runs (another order, say): order, behaviour after learning and
                  per-stage Shapley values side by side, and their bars

The ``*_rows`` functions return display rows (lists of plain values); the ``*_figure``
functions matplotlib figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = [
    "ATTRIBUTION_HEAD",
    "BEHAVIOUR_HEAD",
    "COMPARE_HEAD",
    "OVERLAP_HEAD",
    "STAGE_SECTIONS",
    "SUMMARY_HEAD",
    "attribution_rows",
    "behaviour_rows",
    "budget_figure",
    "compare_rows",
    "is_stages_metrics",
    "overlap_rows",
    "progress_line",
    "shapley_figure",
    "summary_rows",
]

STAGE_SECTIONS = ("summary", "budgets", "behaviour", "attribution", "overlap", "compare")

SUMMARY_HEAD = ["stage", "objective", "data", "levels", "steps", "‖ΔW‖", "cap", "steps clipped", "within budget"]
BEHAVIOUR_HEAD = ["data", "held-out pairs", "log p(chosen)", "log p(rejected)", "margin", "pref. accuracy", "label accuracy"]
ATTRIBUTION_HEAD = ["data", "stage", "Shapley log p(chosen)", "Shapley margin", "share of log p", "drop-one KL"]
OVERLAP_HEAD = ["stages", "modules", "out overlap (mean cos²)", "out min angle °", "in overlap", "in min angle °", "ΔW cosine"]
COMPARE_HEAD = ["run", "order", "data", "log p(chosen) after", "margin after", "pref. accuracy after", "Shapley log p(chosen) per stage", "Shapley margin per stage"]


def is_stages_metrics(metrics: Mapping[str, Any]) -> bool:
    """Whether a ``metrics.json`` is a stages run's."""
    return isinstance(metrics.get("order"), list) and isinstance(metrics.get("stages"), list)


def progress_line(metrics: Mapping[str, Any]) -> str:
    """``stages sft1 → dpo1: 8 of 8 steps, finished in 12 s`` (or where an unfinished run stands)."""
    order = " → ".join(metrics["order"])
    done, total = metrics.get("steps_done"), metrics.get("steps_total")
    steps = f"{done} of {total} steps" if done is not None else f"{sum(len(s['steps']) for s in metrics['stages'])} steps"
    if metrics.get("finished"):
        return f"stages {order}: {steps}, finished in {float(metrics.get('seconds', 0.0)):.0f} s"
    return f"stages {order}: {steps} so far, not finished (`lorahive resume` continues it)"


def _arrow(before: float | None, after: float | None, fmt: str = "{:.3f}") -> str:
    if before is None or after is None:
        return "–"
    return f"{fmt.format(before)} → {fmt.format(after)}"


def summary_rows(metrics: Mapping[str, Any]) -> list[list[Any]]:
    """One row per stage begun: objective, data, levels, steps done (of planned), ‖ΔW‖, cap, clipped, budget held."""
    rows = []
    for st in metrics["stages"]:
        done, planned = len(st["steps"]), st.get("steps_planned")
        rows.append(
            [
                st["stage"],
                st["objective"],
                ", ".join(st["data"]),
                ", ".join(st["levels"]),
                f"{done}" if planned is None else f"{done} of {planned}",
                st["norm"],
                st["cap"],
                f"{st['clipped_steps']}/{done}",
                "yes" if st["within_budget"] else "NO",
            ]
        )
    return rows


def behaviour_rows(metrics: Mapping[str, Any]) -> list[list[Any]]:
    """Per data set: held-out behaviour with every stage off → every stage on."""
    rows = []
    for name, d in (metrics.get("data") or {}).items():
        b, a = d["before"], d["after"]
        rows.append(
            [
                name,
                d.get("eval_pairs"),
                _arrow(b["logp_chosen"], a["logp_chosen"], "{:.2f}"),
                _arrow(b["logp_rejected"], a["logp_rejected"], "{:.2f}"),
                _arrow(b["margin"], a["margin"], "{:+.2f}"),
                _arrow(b["pref_accuracy"], a["pref_accuracy"], "{:.2f}"),
                _arrow(b.get("label_accuracy"), a.get("label_accuracy"), "{:.2f}"),
            ]
        )
    return rows


def attribution_rows(metrics: Mapping[str, Any]) -> list[list[Any]]:
    """Per data set and stage: Shapley value on log p(chosen) and on the margin, share, drop-one KL."""
    rows = []
    for name, d in (metrics.get("data") or {}).items():
        for st, phi in d["shapley_logp"].items():
            rows.append([name, st, phi, d["shapley_margin"][st], d["shares_logp"][st], d["kl_drop"][st]])
    return rows


def overlap_rows(metrics: Mapping[str, Any]) -> list[list[Any]]:
    """Per pair of stages: modules both write, subspace overlaps and smallest angles, the signed ΔW cosine."""
    return [
        [pair.replace("|", " vs "), o["modules"], o["out_overlap"], o["out_min_angle"], o["in_overlap"], o["in_min_angle"], o["cosine"]]
        for pair, o in (metrics.get("overlap") or {}).items()
    ]


def _per_stage(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:+.3f}" for k, v in values.items())


def compare_rows(runs: Mapping[str, Mapping[str, Any]]) -> list[list[Any]]:
    """Per run and data set: its order, behaviour after learning and each stage's Shapley values."""
    rows = []
    for label, m in runs.items():
        for name, d in (m.get("data") or {}).items():
            a = d["after"]
            rows.append([label, " → ".join(m["order"]), name, a["logp_chosen"], a["margin"], a["pref_accuracy"], _per_stage(d["shapley_logp"]), _per_stage(d["shapley_margin"])])
    return rows


# ---------------------------------------------------------------------- figures
def budget_figure(stages: Sequence[Mapping[str, Any]]) -> Figure:
    """‖ΔW‖ of every stage after each of its steps, over the run's steps; the cap dashed, the unprojected norm dotted."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    first = 0
    for k, st in enumerate(stages):
        color = f"C{k % 10}"
        xs = list(range(first + 1, first + len(st["steps"]) + 1))
        ax.plot(xs, [s["norm"] for s in st["steps"]], marker="o", ms=3, color=color, label=f"{st['stage']} ({st['objective']})")
        if any(s["clipped"] for s in st["steps"]):
            ax.plot(xs, [s["norm_before"] for s in st["steps"]], ls=":", color=color, lw=1)
        if st["cap"] is not None and xs:
            ax.hlines(st["cap"], xs[0] - 0.4, xs[-1] + 0.4, colors=color, linestyles="--", lw=1)
        first += len(st["steps"])
    ax.set(xlabel="optimizer step (all stages)", ylabel="‖ΔW‖_F of the stage", title="stage norms after each step (cap dashed, before the budget dotted)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, ncol=4)
    return fig


def shapley_figure(runs: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Per data set (columns) and value (rows: log p(chosen), margin): each run's stages' Shapley values as bars."""
    datasets = list(dict.fromkeys(name for m in runs.values() for name in (m.get("data") or {})))
    tags = list(dict.fromkeys(t for m in runs.values() for t in m["order"]))
    labels = list(runs)
    fig, axes = plt.subplots(2, max(1, len(datasets)), figsize=(3.6 * max(1, len(datasets)) + 1.5, 5.6), squeeze=False)
    width = 0.8 / max(1, len(tags))
    for col, name in enumerate(datasets):
        for row, (key, what) in enumerate((("shapley_logp", "log p(chosen)"), ("shapley_margin", "margin"))):
            ax = axes[row][col]
            for k, tag in enumerate(tags):
                ys = [float(((runs[lb].get("data") or {}).get(name) or {}).get(key, {}).get(tag, 0.0)) for lb in labels]
                ax.bar([i + k * width for i in range(len(labels))], ys, width, label=tag, color=f"C{k % 10}")
            ax.axhline(0, color="k", lw=0.6)
            ax.set_xticks([i + width * (len(tags) - 1) / 2 for i in range(len(labels))], labels, rotation=15, fontsize=7)
            ax.set_title(f"{name}: Shapley on {what}", fontsize=9)
    axes[0][0].set_ylabel("nats")
    axes[1][0].set_ylabel("nats")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig
