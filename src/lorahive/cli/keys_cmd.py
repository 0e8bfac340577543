"""``lorahive keys``: API keys of a served run (``RUN_DIR/keys.json`` holds their hashes only; docs/serving.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lorahive.cli.run_cmd import console, fail, os_error
from lorahive.serve.keys import ADMIN, KeyError_, add_key, read_keys

app = typer.Typer(help="API keys for `lorahive serve`: per agent, or admin (every agent).", no_args_is_help=True, add_completion=False)


@app.command("add")
def add(
    run_dir: Annotated[Path, typer.Argument(help="run directory whose server the key opens")],
    agent: Annotated[str | None, typer.Option("--agent", help="the agent this key may use (that agent only)")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="a key that may use every agent")] = False,
) -> None:
    """Create a key; it is printed once, and only its SHA-256 is stored (RUN_DIR/keys.json)."""
    if (agent is None and not admin) or (agent is not None and admin):
        fail("give --agent NAME or --admin (one of the two)")
        return
    if not run_dir.is_dir():
        fail(f"{run_dir} is not a run directory")
        return
    try:
        key, entry = add_key(run_dir, ADMIN if admin else str(agent))
    except KeyError_ as e:
        fail(str(e))
        return
    except OSError as e:
        fail(os_error(e, run_dir))
        return
    console.print(f"key {entry['id']} for {entry['role']} added to {run_dir / 'keys.json'}; it is shown only now:")
    typer.echo(key)


@app.command("list")
def list_(run_dir: Annotated[Path, typer.Argument(help="run directory")]) -> None:
    """The keys' ids (a prefix of their hash), roles and creation times; never a key."""
    if not run_dir.is_dir():
        fail(f"{run_dir} is not a run directory")
        return
    try:
        keys = read_keys(run_dir)
    except KeyError_ as e:
        fail(str(e))
        return
    if not keys:
        console.print(f"{run_dir} has no keys: `lorahive serve` is open to every client")
        return
    for k in keys:
        typer.echo(f"{k.get('id', k['sha256'][:12])}  {k['role']}  {k.get('created', '?')}")
