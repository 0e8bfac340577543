"""The ``lorahive`` command: thin subcommands that parse arguments and call the library."""

from __future__ import annotations

import typer

from lorahive.cli import (
    compare_cmd,
    implant_cmd,
    inspect_cmd,
    interop_cmd,
    keys_cmd,
    report_cmd,
    run_cmd,
    serve_cmd,
)

app = typer.Typer(help="lorahive: a multi-level LoRA memory for a fleet of LLM agents.", no_args_is_help=True, add_completion=False)
app.command("run")(run_cmd.run)
app.command("resume")(run_cmd.resume)
app.command("demo")(run_cmd.demo)
app.command("inspect")(inspect_cmd.inspect)
app.command("export")(interop_cmd.export)
app.command("import-peft")(interop_cmd.import_peft)
app.command("report")(report_cmd.report)
app.command("compare")(compare_cmd.compare)
app.command("serve")(serve_cmd.serve)
app.command("implant")(implant_cmd.implant)
app.add_typer(keys_cmd.app, name="keys")


if __name__ == "__main__":
    app()
