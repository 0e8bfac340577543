"""``lorahive inspect DIR``: levels, norms, agents, reputation, last tick.

With the mechanisms' events in the ledger, also: the last tick's health metrics and their
statuses, the migrations per channel, and the latest screening counts per level.

A stages run (docs/stages.md) shows where it stands (steps done, its last checkpoint), each
stage's objective, data, levels, scope, ‖ΔW‖ against its budget, and once it is measured the
behaviour, the per-stage Shapley values and drop-one KL on every data set, and the overlaps
of the stages' ΔW.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from safetensors import safe_open

from lorahive.config import ConfigError, is_stages_tree, parse_stages_config, read_tree
from lorahive.observe import report_stages as rs
from lorahive.observe.health_bands import BANDS, status
from lorahive.observe.ledger import Ledger
from lorahive.observe.report_mechanisms import (
    dynamics_lines,
    latest,
    mechanism_events,
    migration_totals,
)
from lorahive.store.checkpoint import CheckpointError, locate

console = Console()


def _level_norms(ckpt: Path) -> list[tuple[str, int, float]]:
    rows = []
    for f in sorted((ckpt / "levels").glob("*.safetensors")):
        sq, slots = 0.0, 0
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 - safe_open has no __iter__
                if key.endswith("/B"):
                    t = st.get_tensor(key)
                    slots = t.shape[0]
                    sq += float((t.float() ** 2).sum())
        rows.append((f.stem, slots, sq**0.5))
    return rows


_STYLE = {"healthy": "green", "warning": "yellow", "critical": "red"}


def _status(s: Any) -> str:
    s = escape(str(s))
    return f"[{_STYLE[s]}]{s}[/{_STYLE[s]}]" if s in _STYLE else f"[dim]{s}[/dim]"


def _mark(metric: str, v: Any) -> str:
    """`` (warning)`` / `` (critical)`` after a per-level or per-channel entry that is one."""
    if metric not in BANDS or not isinstance(v, (int, float)):
        return ""
    s = status(metric, float(v))
    return f" ({_status(s)})" if s in ("warning", "critical") else ""


def _value(metric: str, v: Any) -> str:
    if isinstance(v, Mapping):
        lines = [f"{escape(str(k))} {_value(metric, x)}{_mark(metric, x)}" for k, x in v.items()]
        return "\n".join(lines) or "–"
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.1%}" if metric.endswith("_rate") else f"{v:.3g}"
    return escape(str(v))


def print_mechanisms(events: Sequence[Mapping[str, Any]], out: Console) -> None:
    """The last tick's health table, the migrations per channel, the latest screening counts."""
    health = latest(events, "health")
    if health is not None:
        d = health["detail"]
        metrics, statuses = d.get("metrics") or {}, d.get("status") or {}
        names = [m for m in BANDS if m in metrics or m in statuses]
        names += sorted((set(metrics) | set(statuses)) - set(BANDS))
        title = f"health at tick {health['tick']}: overall {_status(d.get('overall', 'n/a'))}"
        table = Table("metric", "value", "status", title=title)
        for m in names:
            table.add_row(m, _value(m, metrics.get(m)), _status(statuses.get(m, "n/a")))
        out.print(table)
    totals = migration_totals(events)
    if totals:
        per = ", ".join(f"{escape(ch)} {int(t['migrations'])}" for ch, t in totals.items())
        bypass = int(sum(t["bypass"] for t in totals.values()))
        out.print(f"migrations: {per}; {bypass} bypass (fast track)")
    screening = latest(events, "decay")
    if screening is not None:
        levels = screening["detail"].get("levels") or {}
        per = ", ".join(
            f"{escape(str(lv))} {c.get('screened', '–')} / {c.get('free', '–')}"
            for lv, c in levels.items()
        )
        out.print(
            f"screening at tick {screening['tick']} (screened / free patterns): {per or 'no levels'}"
        )
    for line in dynamics_lines(events):
        out.print(escape(line))


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else escape(str(v))


def _rich_table(title: str, head: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    table = Table(*head, title=title)
    for r in rows:
        table.add_row(*(_cell(v) for v in r))
    return table


def _scope(stage: Mapping[str, Any]) -> str:
    scope = stage.get("scope") or {}
    blocks = scope.get("blocks")
    where = "all blocks" if blocks is None else f"blocks {', '.join(str(b) for b in blocks)}"
    return f"{', '.join(scope.get('targets') or [])} in {where}"


def inspect_stages(out: Path, tree: dict[str, Any], console: Console) -> None:
    """Where a stages run stands, its stages and budgets, and (once measured) its behaviour, attribution and overlaps."""
    try:
        cfg = parse_stages_config(tree)
    except ConfigError as e:
        console.print(f"[red]error:[/red] {escape(f'{out}/config.yaml: {e}')}")
        raise typer.Exit(2) from None
    try:
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        metrics = None
    try:
        state = json.loads((locate(out) / "state.json").read_text(encoding="utf-8"))
        at = f"last checkpoint after step {state['tick']} of {cfg.total_steps()}"
    except (CheckpointError, OSError, json.JSONDecodeError, KeyError):
        at = "no checkpoint yet"
    if metrics is None or not rs.is_stages_metrics(metrics):
        console.print(f"[bold]{escape(str(out))}[/bold]: stages {' → '.join(cfg.stage_names())}, nothing measured yet ({at})")
        return
    console.print(f"[bold]{escape(str(out))}[/bold]: {escape(rs.progress_line(metrics))}; {at}")
    rows = rs.summary_rows(metrics)
    scopes = [_scope(st.model_dump()) for st in cfg.stages]
    console.print(_rich_table("stages", [*rs.SUMMARY_HEAD, "scope"], [[*r, scopes[i]] for i, r in enumerate(rows)]))
    if metrics.get("data"):
        console.print(_rich_table("behaviour on held-out pairs (every stage off → on)", rs.BEHAVIOUR_HEAD, rs.behaviour_rows(metrics)))
        console.print(_rich_table("per-stage attribution (exact Shapley values, nats)", rs.ATTRIBUTION_HEAD, rs.attribution_rows(metrics)))
        if metrics.get("overlap"):
            console.print(_rich_table("overlap of the stages' ΔW (principal angles)", rs.OVERLAP_HEAD, rs.overlap_rows(metrics)))
    if (out / "ledger.sqlite").is_file():
        with Ledger(out / "ledger.sqlite") as ledger:
            counts = {r["kind"]: r["n"] for r in ledger.query("SELECT kind, COUNT(*) AS n FROM events GROUP BY kind")}
        console.print(f"ledger: {counts.get('stage_step', 0)} stage steps, {counts.get('resume', 0)} resumes, {'measured' if counts.get('stages_measured') else 'not measured'}")


def _config_tree(out: Path) -> dict[str, Any] | None:
    try:
        return read_tree(out / "config.yaml")
    except ConfigError:
        return None


def inspect(out: Annotated[Path, typer.Argument(help="run directory")]) -> None:
    """Show a run's levels, agents, reputations and last tick (a stages run: its stages, budgets and attribution)."""
    tree = _config_tree(out)
    if tree is not None and is_stages_tree(tree):
        inspect_stages(out, tree, console)
        return
    try:
        ckpt = locate(out)
    except CheckpointError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    console.print(
        f"[bold]{out}[/bold]: tick {state['tick']}, swarm accepted {state['accepted']}, rejected {state['rejected']}"
    )
    levels = Table("level", "slots", "‖B‖ (all slots)", "mix", title="levels")
    for name, slots, norm in _level_norms(ckpt):
        levels.add_row(
            name,
            str(slots),
            f"{norm:.4g}",
            f"{state.get('level_states', {}).get(name, {}).get('mix', 1.0):g}",
        )
    console.print(levels)
    agents = Table("agent", "task type", "reputation", "tasks solved", title="agents")
    for name, a in state["agents_state"].items():
        agents.add_row(name, a["task_type"], f"{a['reputation']:.3f}", str(a["solved"]))
    console.print(agents)
    if (out / "ledger.sqlite").is_file():
        with Ledger(out / "ledger.sqlite") as ledger:
            last = ledger.last_tick()
            acc = ledger.acceptance_by_tick()
            events = mechanism_events(ledger)
        console.print(
            f"ledger: last tick {last}; acceptance by tick: "
            + ", ".join(
                f"{r['tick']}: {r['accepted']} accepted / {r['rejected']} rejected" for r in acc
            )
        )
        print_mechanisms(events, console)
