"""Run directories: start a run, resume it, write metrics — what the CLI calls.

A run directory holds ``config.yaml``, ``checkpoint/``, ``ledger.sqlite`` and ``metrics.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorahive.observe.ledger import Ledger, sha256_of
from lorahive.run_config import RunConfig, dump_config, load_config
from lorahive.runtime import attack
from lorahive.runtime.agent import evaluate
from lorahive.runtime.hive import Hive
from lorahive.runtime.swarm import Swarm, TickContext
from lorahive.store import checkpoint
from lorahive.suites.cl import CLData, load_cl_suite, sample_task
from lorahive.suites.demo import load_demo_suite
from lorahive.suites.task import Task

RUN_FILES = ("config.yaml", "checkpoint", "ledger.sqlite", "metrics.json")
Progress = Callable[[int, int, TickContext | None], None]


class RunDirError(ValueError):
    """A run directory that cannot be used as asked."""


@dataclass
class Run:
    """A live run: its directory, config, hive, swarm and bookkeeping."""

    out: Path
    cfg: RunConfig
    hive: Hive
    swarm: Swarm
    eval_tasks: dict[str, Task]
    before: dict[str, dict[str, float]]
    started: float
    elapsed: float = 0.0


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_data(cfg: RunConfig) -> dict[str, CLData]:
    s = cfg.suite
    if s.source == "demo":
        return load_demo_suite(s.task_types)
    assert s.root is not None
    return load_cl_suite(s.root, s.task_types)


def _eval_tasks(cfg: RunConfig, data: dict[str, CLData], hive: Hive) -> dict[str, Task]:
    s = cfg.suite
    return {t: sample_task(d, 1, min(s.eval_query, len(d.test)), cfg.seed + 7919, hive.tokenizer, s.max_prompt_tokens) for t, d in data.items()}


def evaluate_run(run: Run) -> dict[str, dict[str, float]]:
    """Quality on the held-out tasks with persistent levels (the context slot left out)."""
    levels = persistent_levels(run.hive)
    if run.cfg.suite.eval_all_types:
        return evaluate(run.hive, list(run.swarm.agents), run.eval_tasks, levels)
    out: dict[str, dict[str, float]] = {}
    for task_type, task in run.eval_tasks.items():
        agents = [n for n, a in run.swarm.agents.items() if a.task_type == task_type]
        if agents:
            out.update(evaluate(run.hive, agents, {task_type: task}, levels))
    return out


def persistent_levels(hive: Hive) -> list[str]:
    """Levels that outlive a task: everything but task-scoped levels."""
    return [lv.name for lv in hive.levels if lv.scope != "task"]


def _build(out: Path, cfg: RunConfig) -> Run:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    hive = Hive.load(cfg.base, cfg.stack(), device="cpu" if not torch.cuda.is_available() else None, seed=cfg.seed)
    data = load_data(cfg)
    swarm = Swarm(hive, cfg, data, Ledger(out / "ledger.sqlite"))
    attack.install(swarm, cfg.attack, cfg.seed)
    return Run(out, cfg, hive, swarm, _eval_tasks(cfg, data, hive), {}, time.time())


def prepare_dir(out: Path, force: bool) -> None:
    """Refuse to overwrite a run unless ``force``; with ``force`` remove the old run's files only."""
    present = [f for f in RUN_FILES if (out / f).exists()]
    if present and not force:
        raise RunDirError(f"{out} already holds a run ({', '.join(present)}); use --force to overwrite or `lorahive resume {out}`")
    for f in (*RUN_FILES, "checkpoint.prev", ".checkpoint.tmp", "ledger.sqlite-wal", "ledger.sqlite-shm", "report.html"):
        p = out / f
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def start(cfg: RunConfig, out: str | Path, force: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Run ``cfg`` from scratch into ``out``; returns the metrics written to ``metrics.json``."""
    out = Path(out)
    prepare_dir(out, force)
    write_atomic(out / "config.yaml", dump_config(cfg))
    run = _build(out, cfg)
    run.before = evaluate_run(run)
    _record_eval(run, 0, "before", run.before)
    return _loop(run, progress)


def resume(out: str | Path, progress: Progress | None = None, ticks: int | None = None) -> dict[str, Any]:
    """Continue the run in ``out`` from its last good checkpoint up to its configured ticks.

    ``ticks`` extends (or sets) the run's total number of ticks; config.yaml is updated.
    """
    out = Path(out)
    if not (out / "config.yaml").is_file():
        raise RunDirError(f"{out} holds no run (no config.yaml)")
    cfg = load_config(out / "config.yaml", [f"ticks={ticks}"] if ticks is not None else [])
    checkpoint.locate(out)  # fail before loading the model when there is nothing to resume
    if ticks is not None:
        write_atomic(out / "config.yaml", dump_config(cfg))
    run = _build(out, cfg)
    loaded = checkpoint.load(out, run.hive)
    try:
        run.swarm.load_state(loaded.state)
        run.swarm.aggregator.load_state_dict({k.removeprefix("agg/"): v for k, v in loaded.extra.items() if k.startswith("agg/")})
        run.before = dict(loaded.state["quality_before"])
        run.elapsed = float(loaded.state.get("elapsed", 0.0))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise checkpoint.CheckpointError(f"{checkpoint.locate(out)}: its run state cannot be restored: {e!r}") from None
    run.swarm.ledger.rollback_to(run.swarm.tick_no)
    _record_missing_checkpoint(run)
    return _loop(run, progress)


def _record_missing_checkpoint(run: Run) -> None:
    """A run killed after writing a checkpoint but before its ledger row gets the row now."""
    last = run.swarm.ledger.latest_checkpoint()
    if last is None or int(last["tick"]) < run.swarm.tick_no:
        ckpt = checkpoint.locate(run.out)
        run.swarm.ledger.record_checkpoint(run.swarm.tick_no, run.out / checkpoint.NAME, sha256_of(ckpt / "manifest.json"))


def _record_eval(run: Run, tick: int, phase: str, quality: dict[str, dict[str, float]]) -> None:
    with run.swarm.ledger.transaction():
        for agent, per_type in quality.items():
            for task_type, q in per_type.items():
                run.swarm.ledger.record_score(tick, agent, task_type, phase, q, len(run.eval_tasks[task_type].query))


def _record_final_eval(run: Run, after: dict[str, dict[str, float]]) -> None:
    """Record the final evaluation once, with a ``final_eval`` event in the same transaction.

    A run killed after recording it (while writing metrics.json, say) is resumed at its last
    tick; the evaluation then runs again but is not recorded twice.
    """
    tick = run.swarm.tick_no
    if run.swarm.ledger.query("SELECT 1 FROM events WHERE kind = 'final_eval' AND tick = ?", (tick,)):
        return
    with run.swarm.ledger.transaction():
        _record_eval(run, tick, "after", after)
        run.swarm.ledger.record_event(tick, "final_eval")


def _save(run: Run) -> None:
    state = {**run.swarm.state(), "quality_before": run.before, "elapsed": run.elapsed + time.time() - run.started}
    extra = {f"agg/{k}": v for k, v in run.swarm.aggregator.state_dict().items()}
    path = checkpoint.save(run.out, run.hive, state, extra)
    run.swarm.ledger.record_checkpoint(run.swarm.tick_no, path, sha256_of(path / "manifest.json"))


def _loop(run: Run, progress: Progress | None) -> dict[str, Any]:
    swarm, cfg = run.swarm, run.cfg
    if progress:
        progress(swarm.tick_no, cfg.ticks, None)
    while swarm.tick_no < cfg.ticks:
        ctx = swarm.tick()
        if swarm.tick_no % cfg.checkpoint_every == 0 or swarm.tick_no == cfg.ticks:
            _save(run)
        write_atomic(run.out / "metrics.json", json.dumps(metrics(run, None), indent=1))
        if progress:
            progress(swarm.tick_no, cfg.ticks, ctx)
    after = evaluate_run(run)
    _record_final_eval(run, after)
    result = metrics(run, after)
    write_atomic(run.out / "metrics.json", json.dumps(result, indent=1))
    swarm.ledger.close()
    return result


def metrics(run: Run, after: dict[str, dict[str, float]] | None) -> dict[str, Any]:
    """The run's summary: ticks, agents with quality before/after per task type, swarm counts, time."""
    swarm = run.swarm
    agents = {
        n: {
            "task_type": a.task_type,
            "reputation": round(a.reputation, 4),
            "quality_before": run.before.get(n, {}),
            "quality_after": (after or {}).get(n, {}),
        }
        for n, a in swarm.agents.items()
    }
    return {
        "ticks": swarm.tick_no,
        "finished": after is not None,
        "agents": agents,
        "swarm": {"level": run.cfg.swarm_level, "accepted": swarm.accepted, "rejected": swarm.rejected},
        "wall_time_s": round(run.elapsed + time.time() - run.started, 2),
    }
