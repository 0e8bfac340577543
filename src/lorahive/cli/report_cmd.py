"""``lorahive report DIR [OTHER ...]``: write ``DIR/report.html``, comparing with other runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lorahive.observe.report import write_report

console = Console(stderr=True)


def report(
    out: Annotated[Path, typer.Argument(help="run directory to report on")],
    others: Annotated[list[Path] | None, typer.Argument(help="more run directories to compare with (e.g. baselines)")] = None,
) -> None:
    """Write a self-contained HTML report (plots embedded) into the run directory."""
    try:
        path = write_report(out, others or [])
    except ValueError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    console.print(f"report: {path}")
