"""``lorahive export`` and ``lorahive import-peft``: PEFT adapters out of and into a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lorahive.cli.run_cmd import console, fail, os_error


def export(
    run_dir: Annotated[Path, typer.Argument(help="run directory")],
    agent: Annotated[str, typer.Option("--agent", help="whose view to export")],
    out: Annotated[Path, typer.Option("--out", help="PEFT adapter directory to write")],
    levels: Annotated[str | None, typer.Option("--levels", help="comma-separated levels (default: all but task-scoped ones)")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an adapter already in --out")] = False,
) -> None:
    """Write an agent's view of a run's checkpoint as a standard PEFT LoRA adapter."""
    from lorahive.runtime import interop  # peft loads only for these commands

    try:
        path = interop.export_run(run_dir, agent, out, levels, force)
    except ValueError as e:
        fail(str(e))
        return
    except OSError as e:
        fail(os_error(e, out))
        return
    console.print(f"[green]exported[/green] {agent!r} to {path} (load it with PeftModel.from_pretrained)")


def import_peft(
    run_dir: Annotated[Path, typer.Argument(help="run directory")],
    adapter_dir: Annotated[Path, typer.Argument(help="PEFT LoRA adapter directory (safetensors)")],
    level: Annotated[str, typer.Option("--level", help="level whose slot receives the adapter")],
    agent: Annotated[str | None, typer.Option("--agent", help="the agent's slot, for per-agent levels")] = None,
) -> None:
    """Put a PEFT LoRA adapter into one slot of a run's level and checkpoint the result."""
    from lorahive.runtime import interop  # peft loads only for these commands

    try:
        report = interop.import_into_run(run_dir, adapter_dir, level, agent)
    except ValueError as e:
        fail(str(e))
        return
    except OSError as e:
        fail(os_error(e, run_dir))
        return
    console.print(f"[green]imported[/green] into {level!r} slot {report.slot}: {len(report.ranks)} modules, max relative error {report.max_error:.3g}")
