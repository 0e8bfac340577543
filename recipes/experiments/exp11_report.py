"""Experiment 11's summary and figure (``exp11_vertical.py``), read from its metrics alone."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402

SEVERAL = ("C", "D")  # the scenarios of several agents: their utility is over the agents' own tasks


def utility(m: dict[str, Any], scenario: str, kind: str) -> float:
    return m["several_agents"]["utility"][kind] if scenario[0] in SEVERAL else m["utility"][kind]["mean"]


def figures(m: dict[str, Any], label: str) -> str:
    r, (fp, n) = m["correlation_alignment_utility"], m["false_positive_ticks"]
    return (
        f"{label}: Pearson r(settled c, real utility) over {m['points']} runs: {'undefined' if r is None else f'{r:.3f}'} (spec: > 0.7); "
        f"false-positive rate (resonant ticks of the local and random runs): {fp} / {n}" + ("" if not n else f" = {fp / n:.3f}") + " (spec: < 0.05)."
    )


def markdown(m: dict[str, Any]) -> str:
    levels = list(c.first(c.first(m["summary"]))["final"])

    def final(s: dict[str, Any]) -> str:
        return " / ".join(f"{s['final'][lv]['mean']:.3f}" for lv in levels)

    columns = [("utility", lambda s: f"{s['utility']:.4f}", 0), ("settled c", lambda s: c.cell(s["settled_c"], 2, "never"), 2),
               ("resonant share", "resonant_share", 2), ("first tick → agent", lambda s: c.cell(s["first_to_agent"], 1, "never"), 1),
               ("first tick → swarm", lambda s: c.cell(s["first_to_swarm"], 1, "never"), 1), (f"final: {' / '.join(levels)}", final, 0)]  # fmt: skip
    entries = [([name, kind], s | {"utility": utility(m, name, kind)}) for name, kinds in m["summary"].items() for kind, s in kinds.items()]
    several = m["several_agents"]
    spec_figures = [figures(m, "Scenario B (one agent)"), figures(several, f"Scenario D ({several['agents']} agents)")]
    legend = (
        "utility: one agent (A, B): mean over the levels of the held-out loss drop on the level's data; several agents (C, D): "
        "mean over the agents' own tasks (nats, pattern × eps in the swarm level). Several agents: agent i works task i mod 4 "
        "at its context and agent levels, the swarm level learns their mean. final: the pattern's component in each level's "
        "ΔW at the end, mean over the agents' slots (unit = the pattern at unit norm)."
    )
    table = c.summary_table(["scenario", "type"], entries, columns)
    return c.report(m, f"several agents: {several['agents']}", table, "\n".join([*spec_figures, legend]))


def plot(m: dict[str, Any], path: Path) -> None:
    fig, axes = c.panels()
    kinds = list(m["utility"])
    for name, marker in (("B: vertical resonance", "o"), ("D: several agents, vertical resonance", "x")):
        for kind, color in zip(kinds, ("C0", "C1", "C2", "C7"), strict=True):
            runs = m["scenarios"][name][kind]
            ys = [r["settled_c"] if r["settled_c"] is not None else float("nan") for r in runs.values()]
            axes[0].scatter([utility(m, name, kind)] * len(runs), ys, color=color, marker=marker, label=f"{name[0]}: {kind}")
    axes[0].axhline(m["config"]["vertical"].get("threshold", 0.3), ls=":", color="k")
    axes[0].set_xlabel("real utility (held-out loss drop)")
    axes[0].set_ylabel("settled vertical alignment c (B: o, D: x)")
    axes[0].legend(fontsize=6)
    levels, names = list(c.first(c.first(m["summary"]))["final"]), list(m["summary"])
    width = 0.8 / (len(levels) * len(names))
    for i, lv in enumerate(levels):
        for j, name in enumerate(names):
            ys = [m["summary"][name][k]["final"][lv]["mean"] for k in kinds]
            xs = [t + (i * len(names) + j - (len(levels) * len(names) - 1) / 2) * width for t in range(len(kinds))]
            axes[1].bar(xs, ys, width, color=f"C{i}", alpha=0.4 + 0.6 * j / max(len(names) - 1, 1), label=f"{lv}, {name[0]}")
    axes[1].set_xticks(range(len(kinds)), [k.split(":")[0] for k in kinds], fontsize=7)
    axes[1].set_ylabel("pattern's component at the end")
    axes[1].legend(fontsize=5, ncol=3)
    c.save_figure(fig, path, f"Experiment 11: vertical resonance, three pattern types ({m['size']}, {m['base']})")
