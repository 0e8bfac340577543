"""What a sequential implant run leaves in its out dir: results.json, a Markdown table, a plot.

``results.json`` holds the config and, per method, every checkpoint's six scores, the time
per edit, the level parameters after each checkpoint and the probe before/after.
``table.md`` is one row per method × checkpoint (scores in %); ``scores.png`` plots
efficacy, paraphrase and neighbourhood against the number of edits for every method.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorahive.config.implant import ImplantConfig
from lorahive.store.files import atomic_write_text

if TYPE_CHECKING:
    from lorahive.implant.sequential import MethodResult

__all__ = ["PLOTTED", "SCORE_NAMES", "markdown_table", "plot_scores", "write_results"]

#: The six scores, in the order the table shows them.
SCORE_NAMES = ("efficacy", "paraphrase", "neighbourhood", "reliability", "generalization", "locality")
#: The three scores the issue's targets are set on, one panel each.
PLOTTED = ("efficacy", "paraphrase", "neighbourhood")


def markdown_table(results: Mapping[str, MethodResult]) -> str:
    """One row per method and checkpoint: the six scores in %, seconds per edit, the probe's held-out accuracy."""
    head = ["method", "edits", *SCORE_NAMES, "s/edit", "probe acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        probe = f"{100 * r.probe_after.accuracy:.0f}" if r.probe_after else "–"
        for s in r.checkpoints:
            cells = [name, str(s.n), *(f"{100 * getattr(s, k):.1f}" for k in SCORE_NAMES), f"{r.seconds_per_edit:.2f}", probe]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_scores(results: Mapping[str, MethodResult], path: Path) -> None:
    """Efficacy, paraphrase and neighbourhood (%) against edits made, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3.2), sharey=True)
    for ax, score in zip(axes, PLOTTED, strict=True):
        for name, r in results.items():
            xs = [s.n for s in r.checkpoints]
            ax.plot(xs, [100 * getattr(s, score) for s in r.checkpoints], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_title(score)
        ax.set_xlabel("edits made")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("%")
    axes[-1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(out: Path, cfg: ImplantConfig, results: Mapping[str, MethodResult], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the three files into ``out`` (created); returns what results.json holds."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {"config": cfg.model_dump(mode="json"), "methods": {m: r.as_dict() for m, r in results.items()}, **(extra or {})}
    atomic_write_text(out / "results.json", json.dumps(doc, indent=2) + "\n")
    atomic_write_text(out / "table.md", markdown_table(results))
    plot_scores(results, out / "scores.png")
    return doc
