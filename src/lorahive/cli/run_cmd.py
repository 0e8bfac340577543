"""``lorahive run``, ``resume`` and ``demo``."""

from __future__ import annotations

import copy
import errno
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lorahive.config import (
    ConfigError,
    RunConfig,
    StagesConfig,
    is_stages_tree,
    parse_config,
    parse_stages_config,
    read_tree,
)
from lorahive.observe.ledger import LedgerError
from lorahive.observe.report import write_report
from lorahive.runtime import distributed
from lorahive.runtime import run as runs
from lorahive.runtime.rundir import is_stages_run
from lorahive.runtime.swarm import TickContext
from lorahive.store.checkpoint import CheckpointError
from lorahive.store.lock import RunLockedError

console = Console(stderr=True)


@contextmanager
def _progress(title: str) -> Iterator[Callable[[int, int, TickContext | None], None]]:
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console) as bar:
        task = bar.add_task(title, total=None, info="")

        def update(done: int, total: int, ctx: TickContext | None) -> None:
            info = ""
            if ctx is not None:
                q = [o.quality for o in ctx.outcomes.values()]
                info = f"mean query quality {sum(q) / max(1, len(q)):.2f}, proposals {len(ctx.proposals)}"
            bar.update(task, completed=done, total=total, info=info)

        yield update


def fail(msg: str, code: int = 2) -> None:
    """Print ``msg`` as an error and exit with ``code`` (2: bad input, nothing done)."""
    console.print(f"[red]error:[/red] {escape(msg)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def os_error(e: OSError, where: Path) -> str:
    """One line for an OSError: the path and the reason (full disk, read-only, not a folder)."""
    reason = e.strerror or str(e)
    if e.errno == errno.ENOSPC:
        reason = "no space left on the device; free some space and run again (nothing was left half-written)"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        reason = f"{reason}: cannot write there"
    return f"{e.filename or where}: {reason}"


def _summary(out: Path, result: dict[str, Any], seconds: float) -> None:
    console.print(f"[green]done[/green] in {seconds:.0f} s: {result['ticks']} ticks, swarm accepted {result['swarm']['accepted']}, rejected {result['swarm']['rejected']}")
    for name, a in result["agents"].items():
        own = a["task_type"]
        before, after = a["quality_before"].get(own), a["quality_after"].get(own)
        if before is not None and after is not None:
            console.print(f"  {name} ({own}): quality {before:.2f} → {after:.2f}")
    cl = result.get("cl") or {}
    if "ACC" in cl:
        console.print(f"  {result['method']}: ACC {cl['ACC']:.3f}, BWT {cl['BWT']:+.3f}, FWT {cl['FWT']:+.3f}")
    ret = result.get("retention")
    if ret:
        console.print(f"  held-out perplexity {ret['ppl_before']:.2f} → {ret['ppl_after']:.2f}")
    report = write_report(out)
    console.print(f"results: {out}/metrics.json, ledger: {out}/ledger.sqlite, checkpoint: {out}/checkpoint/, report: {report}")


#: A run's expected failures: reported in one line with exit code 2 (:func:`_reported`).
RUN_ERRORS: tuple[type[Exception], ...] = (runs.RunDirError, ConfigError, CheckpointError, RunLockedError, LedgerError)


@contextmanager
def _reported(out: Path, errors: tuple[type[Exception], ...] = RUN_ERRORS) -> Iterator[None]:
    """Turn ``errors`` into a one-line error and exit code 2; an ``OSError`` names the path it concerns."""
    try:
        yield
    except errors as e:
        fail(str(e))
    except OSError as e:
        fail(os_error(e, out))


def _start(cfg: RunConfig, out: Path, force: bool) -> None:
    if distributed.launched():
        _on_ranks(out, lambda update: distributed.start(cfg, out, force=force, progress=update))
        return
    t = time.time()
    with _reported(out), _progress("ticks") as update:
        result = runs.start(cfg, out, force=force, progress=update)
    _summary(out, result, time.time() - t)


def _on_ranks(out: Path, body: Callable[[Callable[[int, int, TickContext | None], None] | None], dict[str, Any]]) -> None:
    """Run ``body`` on this rank of a torchrun job; rank 0 shows progress and the summary."""
    t = time.time()
    lead = int(os.environ.get("RANK", "0")) == 0
    try:
        with _reported(out, (*RUN_ERRORS, distributed.OutOfSync)):
            if lead:
                with _progress("ticks") as update:
                    result = body(update)
            else:
                result = body(None)
    finally:
        distributed.shutdown()
    if lead:
        _summary(out, result, time.time() - t)


def _torchrun(nproc: int, args: list[str]) -> None:
    """Start ``lorahive ARGS`` on ``nproc`` local ranks under torchrun and exit with its code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m", "lorahive", *args]
    raise typer.Exit(subprocess.run(cmd, check=False).returncode)


def _stages_summary(out: Path, result: dict[str, Any], seconds: float) -> None:
    console.print(f"[green]done[/green] in {seconds:.0f} s: stages {' → '.join(result['order'])}")
    for st in result["stages"]:
        cap = "no budget" if st["cap"] is None else f"budget {st['cap']:.3g} ({st['clipped_steps']} steps clipped)"
        console.print(f"  {st['stage']} ({st['objective']} on {st['data']}): ‖ΔW‖ {st['norm']:.3g}, {cap}")
    for name, d in result["data"].items():
        phi = ", ".join(f"{k} {v:+.2f}" for k, v in d["shapley_logp"].items())
        console.print(f"  {name}: margin {d['before']['margin']:+.2f} → {d['after']['margin']:+.2f}; Shapley on log p(chosen): {phi}")
    report = write_report(out)
    console.print(f"results: {out}/metrics.json, ledger: {out}/ledger.sqlite, weights: {out}/stages.safetensors, checkpoint: {out}/checkpoint/, report: {report}")


#: A stages run's expected failures (a bad value found once the model and data are loaded is a ConfigError).
STAGES_ERRORS: tuple[type[Exception], ...] = (*RUN_ERRORS, ValueError)


@contextmanager
def _stage_progress(cfg: StagesConfig) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar over all stages' optimizer steps, fed by the runner's (stage tag, step done, steps)."""
    tags = cfg.stage_names()
    with _progress("stage steps") as update:

        def step(tag: str, k: int, n: int) -> None:
            update(cfg.first_step(tags.index(tag)) + k, cfg.total_steps(), None)

        yield step


def _start_stages(cfg: StagesConfig, out: Path, force: bool) -> None:
    from lorahive.runtime import stages

    t = time.time()
    with _reported(out, STAGES_ERRORS), _stage_progress(cfg) as step:
        result = stages.start(cfg, out, force=force, progress=step)
    _stages_summary(out, result, time.time() - t)


def _resume_stages(out: Path, ticks: int | None, nproc: int) -> None:
    from lorahive.config import load_stages_config
    from lorahive.runtime import stages

    if ticks is not None or nproc > 1:
        fail(f"{out} is a stages run: it resumes to the end of its configured stages in one process; drop --ticks and --nproc")
    t = time.time()
    with _reported(out, STAGES_ERRORS):
        cfg = load_stages_config(str(out / "config.yaml"))
        with _stage_progress(cfg) as step:
            result = stages.resume(out, progress=step)
    _stages_summary(out, result, time.time() - t)


def run(
    config: Annotated[Path, typer.Argument(help="YAML run config (a swarm run, or a stages run when it has a `stages` section)")],
    out: Annotated[Path, typer.Option("--out", help="run directory to create")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. ticks=5 agent.fast_steps=3")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing run in --out")] = False,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="spread the agents over this many local ranks (torchrun; docs/scaling.md)")] = 1,
) -> None:
    """Run a swarm (or ordered training stages: docs/stages.md) from a YAML config into a run directory."""
    try:
        tree = read_tree(config)
        if is_stages_tree(tree):
            if nproc > 1:
                raise ConfigError("--nproc: a stages run trains one learner in one process; drop --nproc")
            _start_stages(parse_stages_config(tree, overrides or []), out, force)
            return
        cfg = parse_config(tree, overrides or [])
        if nproc > 1:
            distributed.check_config(cfg, nproc)
    except ConfigError as e:
        fail(f"{config}: {e}" if not str(e).startswith(str(config)) else str(e))
        return
    if nproc > 1 and not distributed.launched():
        _torchrun(nproc, ["run", str(config), "--out", str(out), *(overrides or []), *(["--force"] if force else [])])
    _start(cfg, out, force)


#: What the demo sets beside the defaults, to stay inside 5 minutes on 2 cores with every
#: mechanism and the anchor on: 24 held-out examples per task type for before/after (instead of
#: 32) and the level Shapley values on 2 examples per type (instead of 4; they took 133 s of a
#: 318 s demo, each example costing 2^levels forwards).
DEMO_SETTINGS: dict[str, Any] = {"suite": {"eval_query": 24}, "observe": {"influence_examples": 2}}


def demo(
    out: Annotated[Path, typer.Option("--out", help="run directory to create")] = Path("runs/demo"),
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing run in --out")] = False,
) -> None:
    """The demo: embedded SmolLM2-135M, 4 agents, the shipped demo tasks (a few minutes on a CPU)."""
    try:
        cfg = parse_config(copy.deepcopy(DEMO_SETTINGS), overrides or [])
    except ConfigError as e:
        fail(str(e))
        return
    _start(cfg, out, force)


def resume(
    out: Annotated[Path, typer.Argument(help="run directory to continue")],
    ticks: Annotated[int | None, typer.Option("--ticks", min=1, help="run up to this many ticks in total")] = None,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="continue on this many local ranks (torchrun; any number: docs/scaling.md)")] = 1,
) -> None:
    """Continue a run (a swarm or a stages run) from its last good checkpoint."""
    if is_stages_run(out):
        _resume_stages(out, ticks, nproc)
        return
    if nproc > 1 and not distributed.launched():
        _torchrun(nproc, ["resume", str(out), *([f"--ticks={ticks}"] if ticks is not None else [])])
    if distributed.launched():
        _on_ranks(out, lambda update: distributed.resume(out, progress=update, ticks=ticks))
        return
    t = time.time()
    with _reported(out), _progress("ticks") as update:
        result = runs.resume(out, progress=update, ticks=ticks)
    _summary(out, result, time.time() - t)
