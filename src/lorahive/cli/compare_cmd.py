"""``lorahive compare DIR1 DIR2 ...``: method, ACC/BWT/FWT and retention of runs side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lorahive.observe.compare import COLUMNS, GROUP_COLUMNS, group_rows, summary_rows

console = Console()


def compare(
    dirs: Annotated[list[Path], typer.Argument(help="run directories to compare")],
    markdown: Annotated[bool, typer.Option("--markdown", help="print a Markdown table instead")] = False,
    by_seed: Annotated[bool, typer.Option("--by-seed", help="one row per config over its seeds: runs whose configs differ only in `seed`, each figure's mean ± standard deviation")] = False,
) -> None:
    """Compare finished runs: method, ACC, BWT, FWT, perplexity before/after, top level."""
    columns = GROUP_COLUMNS if by_seed else COLUMNS
    try:
        rows = group_rows(dirs) if by_seed else summary_rows(dirs)
    except ValueError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    if markdown:
        typer.echo("| " + " | ".join(columns) + " |")
        typer.echo("|" + "---|" * len(columns))
        for r in rows:
            typer.echo("| " + " | ".join(r) + " |")
        return
    table = Table(*columns, title="runs over seeds" if by_seed else "runs")
    for r in rows:
        table.add_row(*r)
    console.print(table)
