"""``lorahive implant DATA.json --out DIR``: sequential CounterFact edits, scored against a plain LoRA and the base model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lorahive.config import ConfigError, read_tree
from lorahive.config.implant import IMPLANT_METHODS, ImplantConfig, parse_implant
from lorahive.suites.pairs import PairsError

console = Console(stderr=True)

METHOD_CHOICES = (*IMPLANT_METHODS, "all")


def fail(msg: str) -> NoReturn:
    """Print ``msg`` as an error and exit with code 2 (bad input, nothing written)."""
    console.print(f"[red]error:[/red] {escape(msg)}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def _tree(config: Path | None, data: Path | None, out_opts: dict[str, Any]) -> dict[str, Any]:
    """The config tree: the YAML file (its ``data`` relative to it), then the options given on the command line."""
    tree: dict[str, Any] = {}
    if config is not None:
        tree = read_tree(config)
        if isinstance(tree.get("data"), str) and not Path(tree["data"]).is_absolute():
            tree["data"] = str((config.parent / tree["data"]).resolve())
    if data is not None:
        tree["data"] = str(data)
    return tree | {k: v for k, v in out_opts.items() if v is not None}


def _methods(method: str | None) -> list[str] | None:
    """``--method`` as a list of methods (comma-separated, or ``all``); refuses anything else, naming the option."""
    if method is None:
        return None
    names = [m.strip() for m in method.split(",") if m.strip()]
    bad = [m for m in names if m not in METHOD_CHOICES]
    if bad or not names:
        fail(f"--method: {', '.join(bad) or repr(method)} is not a method; allowed: {' | '.join(METHOD_CHOICES)} (or a comma-separated list)")
    return list(IMPLANT_METHODS) if "all" in names else names


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        fail(f"--out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        fail(f"--out: {out} is not empty; pass --force to write into it")


def _setup(tree: dict[str, Any], overrides: list[str], out: Path, force: bool) -> tuple[ImplantConfig, list[Any]]:
    """The checked config and edits, before anything is written (every refusal names the field or option)."""
    from lorahive.implant.edits import load_edits
    from lorahive.implant.sequential import check_writer

    try:
        cfg = parse_implant(tree, overrides)
        edits = load_edits(cfg.data, cfg.edits)
        check_writer(cfg)
    except PairsError as e:
        fail(str(e))
    except ConfigError as e:
        fail(str(e))
    _check_out(out, force)
    return cfg, edits


def implant(
    data: Annotated[Path | None, typer.Argument(help="CounterFact JSON (default: the 32 records shipped in the package)")] = None,
    out: Annotated[Path, typer.Option("--out", help="folder for results.json, table.md, scores.png")] = Path("runs/implant"),
    edits: Annotated[int | None, typer.Option("--edits", help="edits applied in order (default 1000)")] = None,
    base: Annotated[str | None, typer.Option("--base", help="embedded:smollm2-135m or a local HF model folder")] = None,
    method: Annotated[str | None, typer.Option("--method", help="hive | lora | unedited | all, or a comma-separated list")] = None,
    writer: Annotated[str | None, typer.Option("--writer", help="plain | curriculum: how the hive writes one edit")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML implant config (configs/implant.yaml); options given here win")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="key=value override of a config field (repeatable), e.g. --set band=[2,4]")] = None,
    force: Annotated[bool, typer.Option("--force", help="write into a non-empty --out")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out from each method's last saved state (same settings; every save_every edits)")] = False,
) -> None:
    """Apply CounterFact edits one after another; score efficacy, paraphrase, neighbourhood at checkpoints."""
    try:
        tree = _tree(config, data, {"edits": edits, "base": base, "methods": _methods(method), "writer": writer})
    except ConfigError as e:
        fail(str(e))
    if resume and not (out / "state").is_dir():
        fail(f"--resume: {out} holds no saved state (expected {out / 'state'}); start the run without --resume")
    cfg, loaded = _setup(tree, overrides or [], out, force or resume)
    _run(cfg, loaded, out, resume)


def _run(cfg: ImplantConfig, edits: list[Any], out: Path, resume: bool = False) -> None:
    import torch

    from lorahive.base import load_base
    from lorahive.implant.edits import Scores
    from lorahive.implant.results import write_results
    from lorahive.implant.sequential import run_implant

    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    def load() -> tuple[Any, Any]:
        b = load_base(cfg.base)
        return b.model, b.tokenizer

    start = time.perf_counter()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
        tasks: dict[str, Any] = {}

        def on_edit(m: str, done: int, total: int) -> None:
            if m not in tasks:
                tasks[m] = bar.add_task(f"{m} edits", total=total)
            bar.update(tasks[m], completed=done)

        def on_score(m: str, s: Scores) -> None:
            line = f"{m:9s} after {s.n:5d} edits: efficacy {100 * s.efficacy:5.1f}  paraphrase {100 * s.paraphrase:5.1f}  neighbourhood {100 * s.neighbourhood:5.1f}"
            bar.console.print(line + f"  | reliability {100 * s.reliability:5.1f}  generalization {100 * s.generalization:5.1f}  locality {100 * s.locality:5.1f}", highlight=False)

        try:
            results = run_implant(cfg, edits, load, on_edit, on_score, out, resume)
        except (ConfigError, ValueError) as e:
            fail(str(e))
    doc = write_results(out, cfg, results, {"seconds": time.perf_counter() - start, "edits": len(edits)})
    for m, r in doc["methods"].items():
        if r["probe_after"]:
            p = r["probe_after"]
            console.print(f"probe ({m}, layer {p['layer']}): held-out {100 * p['accuracy']:.0f} %, paraphrase {100 * p['paraphrase_accuracy']:.0f} %, unrelated {100 * p['unrelated_accuracy']:.0f} % (chance 50)")
    console.print(f"[green]done[/green] in {doc['seconds']:.0f} s: {out / 'results.json'}, {out / 'table.md'}, {out / 'scores.png'}")
