"""Run directories: start a run, resume it, write metrics — what the CLI calls.

A run directory holds ``config.yaml``, ``checkpoint/``, ``ledger.sqlite``, ``metrics.json``
and (written by the CLI) ``report.html``.

The loop, in order: evaluate before learning (R row 0 and retention perplexity in a
stream) · ticks — after each stream stage every task type is evaluated (row *s* of R)
before the checkpoint of that tick is written, so a checkpoint always holds R so far ·
evaluate after learning · influence and retention · ``metrics.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lorahive.config import ConfigError, RunConfig, dump_config, load_config
from lorahive.core import persistent_levels
from lorahive.observe.ledger import Ledger, sha256_of
from lorahive.observe.metrics import AccuracyMatrix
from lorahive.observe.report_mechanisms import health_summary, tick_seconds
from lorahive.runtime.hive import Hive
from lorahive.runtime.measure import (
    influence_record,
    influence_views,
    level_shares,
    retention_ppl,
    retention_record,
    retention_text,
    view_groups,
)
from lorahive.runtime.mode_eval import evaluate_with_modes, inference_modes
from lorahive.runtime.precheck import (
    check_data,
    check_memory,
    precheck,
    use_deterministic_algorithms,
)
from lorahive.runtime.rundir import (
    RunDirError,
    check_dir,
    is_stages_run,
    starting,
)
from lorahive.runtime.stream import method_stack
from lorahive.runtime.swarm import Swarm, TickContext
from lorahive.store import checkpoint
from lorahive.store.files import atomic_write_text
from lorahive.store.lock import run_lock
from lorahive.store.run_state import validate_run_state
from lorahive.suites.cl import CLData, load_cl_suite, sample_task
from lorahive.suites.demo import load_demo_suite
from lorahive.suites.task import Task

Progress = Callable[[int, int, TickContext | None], None]


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
    R: AccuracyMatrix | None = None
    ppl_before: dict[str, float] | None = None
    last_eval: tuple[int, dict[str, dict[str, float]]] | None = None
    eval_modes: dict[str, int] = field(default_factory=dict)  # the context mode each task type took in the last evaluation
    mark: dict[str, Any] | None = None  # the loaded checkpoint's ledger mark (open_run)


def load_data(cfg: RunConfig) -> dict[str, CLData]:
    s = cfg.suite
    if s.source == "demo":
        return load_demo_suite(cfg.task_types())
    assert s.root is not None
    return load_cl_suite(s.root, cfg.task_types())


def _eval_tasks(cfg: RunConfig, data: dict[str, CLData], hive: Hive) -> dict[str, Task]:
    s = cfg.suite
    return {t: sample_task(d, 1, min(s.eval_query, len(d.test)), cfg.seed + 7919, hive.tokenizer, s.max_prompt_tokens) for t, d in data.items()}


def evaluate_run(run: Run) -> dict[str, dict[str, float]]:
    """Quality on the held-out tasks with persistent levels (the context slot left out).

    A stream scores every agent on every task type; agents with identical views are scored
    once and share the result. Cached per tick (a stage's last evaluation is the run's "after").
    """
    if run.last_eval is not None and run.last_eval[0] == run.swarm.tick_no:
        return run.last_eval[1]
    levels = persistent_levels(run.hive.stack)
    names = list(run.swarm.agents)
    modes = inference_modes(run.swarm.mechanisms)
    picks: dict[str, int] = {}
    if run.cfg.suite.eval_all_types or run.cfg.stream is not None:
        groups = view_groups(run.hive, names)
        scored, picks = evaluate_with_modes(run.hive, modes, sorted(set(groups.values()), key=names.index), run.eval_tasks, levels)
        out = {n: dict(scored[groups[n]]) for n in names}
    else:  # each agent on its own type; agents with identical views are scored once
        groups = view_groups(run.hive, names)
        out = {}
        for task_type, task in run.eval_tasks.items():
            agents = [n for n, a in run.swarm.agents.items() if a.task_type == task_type]
            if agents:
                reps = sorted({groups[n] for n in agents}, key=names.index)
                scored, got = evaluate_with_modes(run.hive, modes, reps, {task_type: task}, levels)
                picks.update(got)
                out.update({n: dict(scored[groups[n]]) for n in agents})
    run.last_eval, run.eval_modes = (run.swarm.tick_no, out), picks
    return out


def record_eval_modes(run: Run) -> None:
    """The context mode each task type took in the last evaluation (none: nothing), as a ``mechanism:context_modes`` event."""
    if run.eval_modes:
        run.swarm.ledger.record_event(run.swarm.tick_no, "mechanism:context_modes", {"action": "eval_route", "modes": dict(run.eval_modes)})


def _r_row(run: Run, stage: int, quality: dict[str, dict[str, float]]) -> None:
    """Row ``stage`` of R: each task type's accuracy, averaged over the agents."""
    assert run.R is not None
    for task_type in run.R.tasks:
        scores = [q[task_type] for q in quality.values()]
        run.R.record(stage, task_type, sum(scores) / len(scores))
    run.swarm.ledger.record_event(run.swarm.tick_no, "stage", {"stage": stage, "R": run.R.to_dict()["R"][stage]})
    record_eval_modes(run)


#: Every name a run writes in its directory: the only names ``--force`` may remove.

#: Most torch threads a config may ask for, per CPU core.
def _prepare(cfg: RunConfig) -> tuple[Hive, dict[str, CLData]]:
    """Check ``cfg``, load the data and the base model, check sizes and memory; writes nothing."""
    precheck(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        use_deterministic_algorithms()
    try:
        data = load_data(cfg)
    except (ValueError, OSError) as e:
        raise ConfigError(f"suite: {e}") from None
    check_data(cfg, data)
    try:
        hive = Hive.load(cfg.base, method_stack(cfg), device="cpu" if not torch.cuda.is_available() else None, seed=cfg.seed, memory=cfg.memory)
    except (ValueError, OSError) as e:
        raise ConfigError(f"base: {e}") from None
    check_memory(hive, cfg)
    return hive, data


def _build(out: Path, cfg: RunConfig, prepared: tuple[Hive, dict[str, CLData]] | None = None) -> Run:
    hive, data = prepared or _prepare(cfg)
    swarm = Swarm(hive, cfg, data, Ledger(out / "ledger.sqlite"))
    run = Run(out, cfg, hive, swarm, _eval_tasks(cfg, data, hive), {}, time.time())
    if cfg.stream is not None:
        run.R = AccuracyMatrix(cfg.stream.order)
    return run


def start(cfg: RunConfig, out: str | Path, force: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Run ``cfg`` from scratch into ``out``; returns the metrics written to ``metrics.json``.

    Nothing is written before the config, the data, the base model and the folder have been
    checked; a failure before the first checkpoint removes what this call created.
    """
    out = Path(out)
    check_dir(out, force)
    prepared = _prepare(cfg)
    built: list[Run] = []

    def close_ledger() -> None:
        for r in built:
            r.swarm.ledger.close()

    with starting(out, force, dump_config(cfg), close_ledger):
        run = _build(out, cfg, prepared)
        built.append(run)
        run.before = evaluate_run(run)
        _record_eval(run, 0, "before", run.before)
        if run.R is not None:
            _r_row(run, 0, run.before)
        if cfg.observe.retention_tokens:
            run.ppl_before = retention_ppl(run.hive, list(run.swarm.agents), cfg.observe, retention_text(cfg.observe))
        return _loop(run, progress)


def resume(out: str | Path, progress: Progress | None = None, ticks: int | None = None) -> dict[str, Any]:
    """Continue the run in ``out`` from its last good checkpoint up to its configured ticks.

    ``ticks`` extends (or sets) the run's total number of ticks; config.yaml is updated.
    """
    out = Path(out)
    if not (out / "config.yaml").is_file():
        raise RunDirError(f"{out} holds no run (no config.yaml)")
    if is_stages_run(out):
        raise RunDirError(f"{out} is a stages run; it resumes with lorahive.runtime.stages.resume (what `lorahive resume` calls for it)")
    with run_lock(out):
        return _resume_locked(out, progress, ticks)


def state_validator(cfg: RunConfig, task_types: list[str] | None, ticks_override: int | None = None) -> Callable[[dict[str, Any], Path], object]:
    """The check :func:`checkpoint.load` runs on state.json for a run of ``cfg``."""

    def check(state: dict[str, Any], file: Path) -> object:
        tick = state.get("tick")
        if ticks_override is not None and isinstance(tick, int) and not isinstance(tick, bool) and ticks_override < tick:
            raise RunDirError(f"--ticks {ticks_override} is below tick {tick} the run has already reached; nothing was changed")
        order = list(cfg.stream.order) if cfg.stream is not None else None
        st = validate_run_state(state, file, cfg.agent_names(), task_types, cfg.ticks, order)
        if st.config is not None:
            was, now = _flat(st.config), _flat(_config_record(cfg))
            changed = sorted(k for k in was.keys() | now.keys() if was.get(k) != now.get(k))
            if changed:
                k = changed[0]
                raise RunDirError(
                    f"config.yaml: {', '.join(changed[:5])} changed since the checkpoint ({k}: {str(was.get(k))[:60]} → {str(now.get(k))[:60]});"
                    " a run resumes with the config it started with (only --ticks may change)"
                )
        return st

    return check


def _resume_locked(out: Path, progress: Progress | None, ticks: int | None) -> dict[str, Any]:
    cfg = load_config(out / "config.yaml", [f"ticks={ticks}"] if ticks is not None else [])
    checkpoint.locate(out)  # fail before loading the model when there is nothing to resume
    if not (out / "ledger.sqlite").is_file():
        raise RunDirError(f"{out / 'ledger.sqlite'} is missing: the run's history is part of the run; restore it (a resume never starts a new ledger)")
    run = _build(out, cfg)
    try:
        return _continue(run, out, cfg, ticks, progress)
    finally:
        run.swarm.ledger.close()


def open_run(out: str | Path) -> Run:
    """The run in ``out`` with its last good checkpoint loaded, no tick run (what ``lorahive serve`` serves).

    The ledger is checked against the checkpoint's mark (kept as ``run.mark``). The caller
    holds the run's lock and closes ``run.swarm.ledger``.
    """
    out = Path(out)
    if not (out / "config.yaml").is_file():
        raise RunDirError(f"{out} holds no run (no config.yaml)")
    if is_stages_run(out):
        raise RunDirError(f"{out} is a stages run: it has no agents to serve or export; its weights are {out / 'stages.safetensors'} (docs/stages.md)")
    cfg = load_config(out / "config.yaml", [])
    checkpoint.locate(out)
    if not (out / "ledger.sqlite").is_file():
        raise RunDirError(f"{out / 'ledger.sqlite'} is missing: the run's history is part of the run; restore it")
    run = _build(out, cfg)
    try:
        loaded = checkpoint.load(out, run.hive.core, state_validator(cfg, sorted(run.swarm.data)))
        _restore(run, loaded)
        run.mark = loaded.state.get("ledger")
        if run.mark is not None:
            run.swarm.ledger.verify_mark(run.mark)
    except BaseException:
        run.swarm.ledger.close()
        raise
    return run


def _restore(run: Run, loaded: checkpoint.Loaded) -> None:
    """Put a loaded checkpoint's run state back into ``run`` (swarm, evaluation before, R, time)."""
    try:
        legacy = {f"mechanism/aggregation/{k.removeprefix('agg/')}": v for k, v in loaded.extra.items() if k.startswith("agg/")}  # checkpoints before mechanisms/base.py
        run.swarm.load_state(loaded.state, loaded.extra | legacy)
        run.before = dict(loaded.state["quality_before"])
        run.elapsed = float(loaded.state.get("elapsed", 0.0))
        run.ppl_before = loaded.state.get("ppl_before")
        if run.R is not None:
            for stage, row in enumerate(loaded.state["cl_R"]):
                for task_type, v in zip(run.R.tasks, row, strict=True):
                    if v is not None:
                        run.R.record(stage, task_type, v)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise checkpoint.CheckpointError(f"{checkpoint.locate(run.out)}: its run state cannot be restored: {e!r}") from None


#: Ledger events ``lorahive serve`` writes that a checkpoint must cover before a tick loop may continue.
SERVE_EVENTS = ("serve_feedback", "serve_learn", "serve_tick")


def _refuse_unreplayed_feedback(run: Run, mark: dict[str, Any]) -> None:
    """A server killed with feedback not yet in a checkpoint: only ``lorahive serve`` replays it."""
    rows = run.swarm.ledger.query(
        f"SELECT COUNT(*) AS n FROM events WHERE id > ? AND kind IN ({', '.join('?' * len(SERVE_EVENTS))})",
        (int(mark["max_ids"].get("events", 0)), *SERVE_EVENTS),
    )
    if rows[0]["n"]:
        raise RunDirError(
            f"{run.out}: the ledger holds {rows[0]['n']} rows of `lorahive serve` (acknowledged feedback and its learning) newer than"
            f" the checkpoint; start `lorahive serve {run.out}` once (it learns them again) and stop it, then resume"
        )


def _continue(run: Run, out: Path, cfg: RunConfig, ticks: int | None, progress: Progress | None) -> dict[str, Any]:
    loaded = checkpoint.load(out, run.hive.core, state_validator(cfg, sorted(run.swarm.data), ticks))
    _restore(run, loaded)
    mark = loaded.state.get("ledger")
    if mark is not None:
        run.swarm.ledger.verify_mark(mark)
        _refuse_unreplayed_feedback(run, mark)
    if ticks is not None:
        atomic_write_text(out / "config.yaml", dump_config(cfg))
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
        if run.R is None:  # a stream recorded its last evaluation's modes with its last R row
            record_eval_modes(run)
        run.swarm.ledger.record_event(tick, "final_eval")


def _config_record(cfg: RunConfig) -> dict[str, Any]:
    """The config a checkpoint records: everything but ``ticks`` (``resume --ticks`` may change it)."""
    tree = cfg.model_dump(mode="json")
    tree.pop("ticks")
    return tree


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def save_checkpoint(run: Run) -> Path:
    """Write the run's checkpoint (state, tensors, the ledger's mark) and its ledger row; returns its path."""
    state = {
        **run.swarm.state(),
        "quality_before": run.before,
        "elapsed": run.elapsed + time.time() - run.started,
        "ppl_before": run.ppl_before,
        "ledger": run.swarm.ledger.mark(),
        "config": _config_record(run.cfg),
    }
    if run.R is not None:
        state["cl_R"] = run.R.to_dict()["R"]
    path = checkpoint.save(run.out, run.hive.core, state, run.swarm.tensors())
    run.swarm.ledger.record_checkpoint(run.swarm.tick_no, path, sha256_of(path / "manifest.json"))
    return path


def _loop(run: Run, progress: Progress | None) -> dict[str, Any]:
    swarm, cfg = run.swarm, run.cfg
    if progress:
        progress(swarm.tick_no, cfg.ticks, None)
    while swarm.tick_no < cfg.ticks:
        ctx = swarm.tick()
        stage_end = swarm.schedule is not None and swarm.schedule.ends_stage(swarm.tick_no)
        if stage_end and swarm.schedule is not None:
            _r_row(run, swarm.schedule.stage_of(swarm.tick_no), evaluate_run(run))
        if swarm.tick_no % cfg.checkpoint_every == 0 or swarm.tick_no == cfg.ticks or stage_end:
            save_checkpoint(run)
        atomic_write_text(run.out / "metrics.json", json.dumps(metrics(run, None), indent=1))
        if progress:
            progress(swarm.tick_no, cfg.ticks, ctx)
    after = evaluate_run(run)
    _record_final_eval(run, after)
    result = metrics(run, after, _final(run))
    atomic_write_text(run.out / "metrics.json", json.dumps(result, indent=1))
    swarm.ledger.close()
    return result


def _final(run: Run) -> dict[str, Any]:
    """End-of-run measurements: retention perplexity after learning and level/agent influence."""
    obs, hive, agents = run.cfg.observe, run.hive, list(run.swarm.agents)
    out: dict[str, Any] = {}
    if obs.retention_tokens:
        out["retention"] = retention_record(run.ppl_before, retention_ppl(hive, agents, obs, retention_text(obs)), obs.retention_tokens)
    views = influence_views(hive, run.swarm.agents, run.eval_tasks, run.cfg.stream is not None)
    shares = level_shares(hive, run.eval_tasks, views, obs.influence_examples) if obs.influence_examples else None
    out["influence"] = influence_record(shares, run.swarm.attribution, obs.influence_examples)
    return out


def metrics(run: Run, after: dict[str, dict[str, float]] | None, final: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's summary: ticks, agents with quality before/after per task type, swarm counts,
    the stream's accuracy matrix and ACC/BWT/FWT, retention and influence (at the end), time."""
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
    out: dict[str, Any] = {
        "ticks": swarm.tick_no,
        "finished": after is not None,
        "method": swarm.method.name,
        "agents": agents,
        "swarm": {"level": run.cfg.swarm_level, "accepted": swarm.accepted, "rejected": swarm.rejected},
    }
    if run.R is not None and run.cfg.stream is not None:
        out["cl"] = {"order": run.R.tasks, "ticks_per_stage": run.cfg.stream.ticks_per_stage, **run.R.to_dict()}
    if any(m.name == "health" and m.enabled for m in swarm.mechanisms):
        out["health"] = health_summary(swarm.ledger.events())
    out.update(final or {})
    out["tick_seconds"] = tick_seconds(swarm.ledger.events("tick_seconds"))
    out["wall_time_s"] = round(run.elapsed + time.time() - run.started, 2)
    return out

