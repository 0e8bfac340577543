"""The recipes' figures: panels, one line per method, bars per task type (``common`` re-exports them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panels(n: int = 2, size: tuple[float, float] = (5, 4), rows: int = 1) -> tuple[Any, Any]:
    """A figure of ``rows`` × ``n`` panels, each ``size`` inches."""
    return figure().subplots(rows, n, figsize=(size[0] * n, size[1] * rows), squeeze=rows == 1)


def lines(ax: Any, curves: dict[str, Sequence[float]], xlabel: str, ylabel: str, start: int = 0, styles: Sequence[str] = (), legend: int | None = 7) -> None:
    """One line per method (``curves``: label → values at x = start, start + 1, …), labelled axes, a legend."""
    for i, (label, ys) in enumerate(curves.items()):
        ax.plot(range(start, start + len(ys)), [float("nan") if y is None else y for y in ys], styles[i] if styles else "-", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend:
        ax.legend(fontsize=legend)


def task_bars(ax: Any, names: Sequence[str], tasks: Sequence[str], value: Callable[[str, str], float], ylabel: str, ticks: Sequence[str] | None = None, fontsize: int | None = None) -> None:
    """Grouped bars: for each system in ``names``, one bar per task type, ``value(name, task)``."""
    width = 0.8 / len(tasks)
    for j, t in enumerate(tasks):
        ax.bar([i + (j - (len(tasks) - 1) / 2) * width for i in range(len(names))], [value(n, t) for n in names], width, label=t)
    ax.set_xticks(range(len(names)), list(ticks or names), fontsize=fontsize)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def save_figure(fig: Any, path: Path, title: str) -> None:
    """Title, lay out and write ``fig`` as a PNG, then close it."""
    plt = figure()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
