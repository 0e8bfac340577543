"""Side-by-side summaries of run directories: method, ACC/BWT/FWT, retention, influence.

A stages run (docs/stages.md) shows as method ``stages``, its optimizer steps as ticks and
its most influential stage as the top level.

What ``lorahive compare DIR ...`` prints and what the report's summary table holds, read
from each run's ``metrics.json`` (and ``config.yaml`` for the task size). With
``--by-seed``, runs whose configs differ only in ``seed`` are one row: each figure's mean
± standard deviation over them (:func:`group_rows`), the form an ablation table over seeds
takes (docs/mechanisms.md).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["COLUMNS", "GROUP_COLUMNS", "Summary", "group_rows", "load_summary", "seed_groups", "summary_rows"]

COLUMNS = ("run", "method", "ticks", "ACC", "BWT", "FWT", "ppl before", "ppl after", "top level", "wall s")
GROUP_COLUMNS = ("runs", "method", "seeds", "ACC", "BWT", "FWT", "ppl rise %")


@dataclass(frozen=True)
class Summary:
    """The headline numbers of one run directory."""

    label: str
    method: str
    ticks: int
    finished: bool
    cl: dict[str, Any] = field(default_factory=dict)
    ppl_before: float | None = None
    ppl_after: float | None = None
    wall_time_s: float | None = None
    query_size: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def top_levels(self) -> str:
        """The level (of a stages run: the stage) with the largest mean |Shapley share| over task types (data sets), with that share."""
        levels = (self.metrics.get("influence") or {}).get("levels") or {}
        if self.method == "stages":
            levels = {name: d["shares_logp"] for name, d in (self.metrics.get("data") or {}).items()}
        if not levels:
            return ""
        names = list(next(iter(levels.values())))
        mean = {lv: sum(abs(v[lv]) for v in levels.values()) / len(levels) for lv in names}
        best = max(mean, key=lambda k: mean[k])
        return f"{best} {mean[best]:.2f}"


def load_summary(run_dir: str | Path) -> Summary:
    """Read a run directory's ``metrics.json``; raises ``ValueError`` naming the file when absent."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read run metrics ({e})") from None
    query = None
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
        query = (cfg.get("suite") or {}).get("query")
    if isinstance(m.get("order"), list) and isinstance(m.get("stages"), list):  # a stages run (runtime/stages.py): steps for ticks
        steps = m.get("steps_done", sum(len(st.get("steps", [])) for st in m["stages"]))
        return Summary(label=run_dir.name, method="stages", ticks=int(steps), finished=bool(m.get("finished", "data" in m)), wall_time_s=m.get("seconds"), metrics=m)
    ret = m.get("retention") or {}
    cl = {k: v for k, v in (m.get("cl") or {}).items() if k in ("ACC", "BWT", "FWT", "R", "tasks")}
    return Summary(
        label=run_dir.name,
        method=str(m.get("method", "hive")),
        ticks=int(m.get("ticks", 0)),
        finished=bool(m.get("finished", False)),
        cl=cl,
        ppl_before=ret.get("ppl_before"),
        ppl_after=ret.get("ppl_after"),
        wall_time_s=m.get("wall_time_s"),
        query_size=query,
        metrics=m,
    )


def _num(v: Any, signed: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def summary_rows(dirs: Sequence[str | Path]) -> list[list[str]]:
    """One row of :data:`COLUMNS` per run directory, as display strings."""
    rows = []
    for d in dirs:
        s = load_summary(d)
        rows.append(
            [
                s.label + ("" if s.finished else " (unfinished)"),
                s.method,
                str(s.ticks),
                _num(s.cl.get("ACC")),
                _num(s.cl.get("BWT"), signed=True),
                _num(s.cl.get("FWT"), signed=True),
                "–" if s.ppl_before is None else f"{s.ppl_before:.2f}",
                "–" if s.ppl_after is None else f"{s.ppl_after:.2f}",
                s.top_levels() or "–",
                "–" if s.wall_time_s is None else f"{s.wall_time_s:.0f}",
            ]
        )
    return rows


def config_without_seed(run_dir: str | Path) -> tuple[str, int]:
    """A run's ``config.yaml`` with ``seed`` taken out (canonical JSON), and the seed; ``ValueError`` naming the file when unreadable."""
    path = Path(run_dir) / "config.yaml"
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the run's config ({e}); --by-seed groups runs by it") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: not a run config (a mapping expected); --by-seed groups runs by it")
    seed = int(cfg.pop("seed", 0))
    return json.dumps(cfg, sort_keys=True, default=str), seed


def seed_groups(dirs: Sequence[str | Path]) -> list[list[tuple[Summary, int]]]:
    """The runs grouped by their config without ``seed``, in the order each group first appears; each run with its seed."""
    groups: dict[str, list[tuple[Summary, int]]] = {}
    for d in dirs:
        key, seed = config_without_seed(d)
        groups.setdefault(key, []).append((load_summary(d), seed))
    return list(groups.values())


def _spread(values: Sequence[float], signed: bool = False) -> str:
    """``mean ± standard deviation`` (the sample's, n − 1) of ``values``; the one value when there is one."""
    if not values:
        return "–"
    mean = statistics.fmean(values)
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return text if len(values) == 1 else f"{text} ± {statistics.stdev(values):.3f}"


def group_rows(dirs: Sequence[str | Path]) -> list[list[str]]:
    """One row of :data:`GROUP_COLUMNS` per :func:`seed_groups` group; unfinished runs are named and left out of the figures."""
    rows = []
    for group in seed_groups(dirs):
        done = [(s, seed) for s, seed in group if s.finished]
        left = [s.label for s, _ in group if not s.finished]
        label = " / ".join(s.label for s, _ in done) + (f" ({', '.join(left)} unfinished, left out)" if left else "")
        rise = [100.0 * (s.ppl_after / s.ppl_before - 1.0) for s, _ in done if s.ppl_before and s.ppl_after is not None]
        rows.append(
            [
                label.strip(),
                group[0][0].method,
                ",".join(str(seed) for _, seed in done) or "–",
                *(_spread([s.cl[k] for s, _ in done if s.cl.get(k) is not None], signed=k != "ACC") for k in ("ACC", "BWT", "FWT")),
                _spread(rise, signed=True),
            ]
        )
    return rows
