"""``lorahive inspect DIR``: levels, norms, agents, reputation, last tick."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from safetensors import safe_open

from lorahive.observe.ledger import Ledger
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


def inspect(out: Annotated[Path, typer.Argument(help="run directory")]) -> None:
    """Show a run's levels, agents, reputations and last tick."""
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
        console.print(
            f"ledger: last tick {last}; acceptance by tick: "
            + ", ".join(
                f"{r['tick']}: {r['accepted']} accepted / {r['rejected']} rejected" for r in acc
            )
        )
