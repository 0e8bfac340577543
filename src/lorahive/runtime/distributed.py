"""A run over the ranks of a ``torch.distributed`` job (``torchrun --nproc_per_node N -m lorahive run …``).

The same run as :mod:`lorahive.runtime.run`, with the agents spread over ranks
(:mod:`lorahive.runtime.ranks` has the layout and the tick's collectives). What differs:

* rank 0 holds the run's lock and writes the run directory — config, the ledger, metrics,
  the checkpoint; the other ranks keep a scratch ledger of their own, thrown away at the end;
* at every checkpoint the ranks prove by hash that their shared state is bit-identical
  (a mismatch stops the run), then each rank's agent slots travel to rank 0, which writes one
  checkpoint in the single-process format — so a run resumes with any number of ranks;
* evaluation (before/after, each stream stage's row of R, retention) runs each agent on its
  own rank and is gathered; influence is spread over the ranks by task type once every rank
  holds every slot (gathered after the last tick).

Errors that any rank meets while checking (config, run directory, checkpoint) stop every rank
with the same message; a rank that dies mid-run makes the others' next collective fail, and
torchrun stops the job: the run directory keeps its last good checkpoint and resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lorahive.config import ConfigError, RunConfig, dump_config, load_config
from lorahive.core import persistent_levels
from lorahive.mechanisms.compose import build_aggregator
from lorahive.mechanisms.registry import DEFAULT_FACTORIES, build_mechanisms, check_mechanisms
from lorahive.mechanisms.resonance import DirectionTracker
from lorahive.observe.health import health_factory
from lorahive.observe.ledger import Ledger
from lorahive.observe.metrics import AccuracyMatrix
from lorahive.runtime import run as runs
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
from lorahive.runtime.ranks import (
    Comm,
    OutOfSync,
    RankAggregator,
    RankMethod,
    RankPeers,
    Ranks,
    check_in_sync,
    check_supported,
    collect_slots,
)
from lorahive.runtime.rundir import (
    RunDirError,
    check_dir,
    make_dirs,
    prepare_dir,
    remove_owned,
    undo_start,
)
from lorahive.runtime.stream import build_method
from lorahive.runtime.swarm import Swarm
from lorahive.store import checkpoint
from lorahive.store.files import atomic_write_text
from lorahive.store.lock import LOCK_NAME, run_lock

__all__ = ["OutOfSync", "PeerFailed", "check_config", "launched", "resume", "shutdown", "start"]

#: Seconds a collective waits for a silent peer before the run fails (``LORAHIVE_DIST_TIMEOUT``).
TIMEOUT_S = 600.0


class PeerFailed(RunDirError):
    """Another rank refused to go on; its message is repeated here."""


def launched() -> bool:
    """Whether this process is one of several ranks started by torchrun (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_ranks() -> Ranks:
    """Join the job torchrun started: NCCL with one GPU per rank when CUDA is there, gloo on CPUs."""
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get("LORAHIVE_DIST_TIMEOUT", TIMEOUT_S)))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    return Ranks(dist.get_rank(), dist.get_world_size(), device)


def check_config(cfg: RunConfig, world: int) -> None:
    """Refuse (``ConfigError``) a config that cannot run exactly on ``world`` ranks; reads no model."""
    check_supported(cfg, check_mechanisms(build_mechanisms(cfg, cfg.agent_names(), (*DEFAULT_FACTORIES, health_factory))), world)


def shutdown() -> None:
    """Leave the job's process group (once this rank is done with the run, or has failed)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _agree(comm: Comm, check: Callable[[], None]) -> None:
    """Run ``check`` on this rank; if it raises on any rank, every rank raises (the failing one its own error)."""
    error: BaseException | None = None
    try:
        check()
    except (ConfigError, RunDirError, checkpoint.CheckpointError, OSError, ValueError) as e:
        error = e
    errors = comm.gather("agree", None if error is None else str(error))
    if error is not None:
        raise error
    failed = next(((r, m) for r, m in enumerate(errors) if m is not None), None)
    if failed is not None:
        raise PeerFailed(f"rank {failed[0]}: {failed[1]}")


def _build(out: Path, cfg: RunConfig, prepared: Any, comm: Comm, ledger: Path) -> runs.Run:
    hive, data = prepared
    names = cfg.agent_names()
    mechanisms = check_mechanisms(build_mechanisms(cfg, names, (*DEFAULT_FACTORIES, health_factory)))
    check_supported(cfg, mechanisms, comm.ranks.world)
    trackers = [m for m in mechanisms if isinstance(m, DirectionTracker)]
    aggregator = RankAggregator(build_aggregator(cfg.aggregation, trackers[0].direction if trackers else None), comm)
    swarm = Swarm(hive, cfg, data, Ledger(ledger), aggregator=aggregator, method=RankMethod(build_method(cfg), comm), mechanisms=mechanisms, peers=RankPeers(comm))
    run = runs.Run(out, cfg, hive, swarm, runs._eval_tasks(cfg, data, hive), {}, time.time())
    if cfg.stream is not None:
        run.R = AccuracyMatrix(cfg.stream.order)
    return run


@contextmanager
def _ledger_path(out: Path, ranks: Ranks) -> Iterator[Path]:
    """Rank 0 writes the run's ledger; every other rank a scratch one, removed afterwards."""
    if ranks.lead:
        yield out / "ledger.sqlite"
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"lorahive-rank{ranks.rank}-"))
    try:
        yield scratch / "ledger.sqlite"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------- evaluation, spread over ranks
def evaluate_spread(run: runs.Run, comm: Comm) -> dict[str, dict[str, float]]:
    """:func:`lorahive.runtime.run.evaluate_run` with each agent scored on its own rank, gathered in agent order."""
    if run.last_eval is not None and run.last_eval[0] == run.swarm.tick_no:
        return run.last_eval[1]
    levels = persistent_levels(run.hive.stack)
    names = list(run.swarm.agents)
    mine = comm.ranks.mine(names)
    modes = inference_modes(run.swarm.mechanisms)
    picks: dict[str, int] = {}
    groups = view_groups(run.hive, mine)
    local: dict[str, dict[str, float]] = {}
    if run.cfg.suite.eval_all_types or run.cfg.stream is not None:
        reps = sorted(set(groups.values()), key=names.index)
        scored, picks = evaluate_with_modes(run.hive, modes, reps, run.eval_tasks, levels) if reps else ({}, {})
        local = {n: dict(scored[groups[n]]) for n in mine}
    else:
        for task_type, task in run.eval_tasks.items():
            agents = [n for n in mine if run.swarm.agents[n].task_type == task_type]
            if agents:
                reps = sorted({groups[n] for n in agents}, key=names.index)
                scored, got = evaluate_with_modes(run.hive, modes, reps, {task_type: task}, levels)
                picks.update(got)
                local.update({n: dict(scored[groups[n]]) for n in agents})
    merged = {n: q for part in comm.gather("eval", local) for n, q in part.items()}
    out = {n: merged[n] for n in names if n in merged}
    run.last_eval, run.eval_modes = (run.swarm.tick_no, out), picks  # a task type's mode is the same on every rank
    return out


def _retention(run: runs.Run, comm: Comm) -> dict[str, float]:
    mine = comm.ranks.mine(list(run.swarm.agents))
    local = retention_ppl(run.hive, mine, run.cfg.observe, retention_text(run.cfg.observe)) if mine else {}
    merged = {n: v for part in comm.gather("eval", local) for n, v in part.items()}
    return {n: merged[n] for n in run.swarm.agents}


def _final(run: runs.Run, comm: Comm) -> dict[str, Any]:
    """:func:`lorahive.runtime.run._final` spread over ranks: retention per agent, influence per task type."""
    obs, hive = run.cfg.observe, run.hive
    out: dict[str, Any] = {}
    if obs.retention_tokens:
        out["retention"] = retention_record(run.ppl_before, _retention(run, comm), obs.retention_tokens)
    shares = None
    if obs.influence_examples:
        collect_slots(comm, run.swarm, everywhere=True)  # influence routes a type's examples over agents of any rank
        types = [t for i, t in enumerate(run.eval_tasks) if comm.ranks.owner(i) == comm.ranks.rank]
        local = level_shares(hive, {t: run.eval_tasks[t] for t in types}, influence_views(hive, run.swarm.agents, run.eval_tasks, run.cfg.stream is not None), obs.influence_examples) if types else {}
        merged = {t: v for part in comm.gather("eval", local) for t, v in part.items()}
        shares = {t: merged[t] for t in run.eval_tasks}
    out["influence"] = influence_record(shares, run.swarm.attribution, obs.influence_examples)
    return out


# ---------------------------------------------------------------------- the loop
def _traffic(comm: Comm, ticks: list[dict[str, int]]) -> dict[str, Any]:
    """What the metrics say about the job: its shape and the bytes its collectives moved."""
    kinds = sorted({k for t in ticks for k in t})
    return {
        "world_size": comm.ranks.world,
        "backend": dist.get_backend(),
        "bytes_per_tick": {k: round(sum(t.get(k, 0) for t in ticks) / len(ticks)) for k in kinds} if ticks else {},
        "ticks_measured": len(ticks),
        "bytes_total": dict(comm.bytes),
    }


def _checkpoint(run: runs.Run, comm: Comm) -> None:
    check_in_sync(comm, run.swarm)
    collect_slots(comm, run.swarm)
    if comm.ranks.lead:
        runs.save_checkpoint(run)


def _loop(run: runs.Run, comm: Comm, progress: runs.Progress | None) -> dict[str, Any]:
    swarm, cfg, lead = run.swarm, run.cfg, comm.ranks.lead
    ticks: list[dict[str, int]] = []
    if progress and lead:
        progress(swarm.tick_no, cfg.ticks, None)
    while swarm.tick_no < cfg.ticks:
        before = dict(comm.bytes)
        ctx = swarm.tick()
        ticks.append({k: v - before.get(k, 0) for k, v in comm.bytes.items() if v - before.get(k, 0)})
        stage_end = swarm.schedule is not None and swarm.schedule.ends_stage(swarm.tick_no)
        if stage_end and swarm.schedule is not None:
            runs._r_row(run, swarm.schedule.stage_of(swarm.tick_no), evaluate_spread(run, comm))
        if swarm.tick_no % cfg.checkpoint_every == 0 or swarm.tick_no == cfg.ticks or stage_end:
            _checkpoint(run, comm)
        if lead:
            atomic_write_text(run.out / "metrics.json", json.dumps({**runs.metrics(run, None), "distributed": _traffic(comm, ticks)}, indent=1))
            if progress:
                progress(swarm.tick_no, cfg.ticks, ctx)
    after = evaluate_spread(run, comm)
    final = _final(run, comm)
    if lead:
        runs._record_final_eval(run, after)
    result = {**runs.metrics(run, after, final), "distributed": _traffic(comm, ticks)}
    if lead:
        atomic_write_text(run.out / "metrics.json", json.dumps(result, indent=1))
    dist.barrier()
    return result


def start(cfg: RunConfig, out: str | Path, force: bool = False, progress: runs.Progress | None = None) -> dict[str, Any]:
    """:func:`lorahive.runtime.run.start` over the ranks of this job (every rank calls it)."""
    out = Path(out)
    comm = Comm(init_ranks())
    lead = comm.ranks.lead
    _agree(comm, lambda: check_dir(out, force) if lead else None)
    prepared: Any = None

    def prepare() -> None:
        nonlocal prepared
        check_config(cfg, comm.ranks.world)
        prepared = runs._prepare(cfg)

    _agree(comm, prepare)
    with ExitStack() as stack:
        created = make_dirs(out) if lead else []
        had_lock = (out / LOCK_NAME).exists()

        def open_dir() -> None:
            if lead:
                stack.enter_context(run_lock(out))
                prepare_dir(out, force)
                atomic_write_text(out / "config.yaml", dump_config(cfg))

        try:
            _agree(comm, open_dir)
        except BaseException:
            if lead:
                undo_start(out, had_lock, created)
            raise
        ledger = stack.enter_context(_ledger_path(out, comm.ranks))
        run: runs.Run | None = None
        try:
            run = _build(out, cfg, prepared, comm, ledger)
            run.before = evaluate_spread(run, comm)
            if lead:
                runs._record_eval(run, 0, "before", run.before)
            if run.R is not None:
                runs._r_row(run, 0, run.before)
            if cfg.observe.retention_tokens:
                run.ppl_before = _retention(run, comm)
            return _loop(run, comm, progress)
        except BaseException:
            if lead and not any((out / n / "manifest.json").is_file() for n in (checkpoint.NAME, checkpoint.PREV)):
                if run is not None:
                    run.swarm.ledger.close()
                remove_owned(out)
            raise
        finally:
            if run is not None:
                run.swarm.ledger.close()


def resume(out: str | Path, progress: runs.Progress | None = None, ticks: int | None = None) -> dict[str, Any]:
    """:func:`lorahive.runtime.run.resume` over the ranks of this job, with any number of ranks."""
    out = Path(out)
    comm = Comm(init_ranks())
    lead = comm.ranks.lead
    with ExitStack() as stack:

        def opened() -> None:
            if not (out / "config.yaml").is_file():
                raise RunDirError(f"{out} holds no run (no config.yaml)")
            if lead:
                stack.enter_context(run_lock(out))
            checkpoint.locate(out)
            if not (out / "ledger.sqlite").is_file():
                raise RunDirError(f"{out / 'ledger.sqlite'} is missing: the run's history is part of the run; restore it (a resume never starts a new ledger)")

        _agree(comm, opened)
        cfg: RunConfig | None = None
        prepared: Any = None

        def prepare() -> None:
            nonlocal cfg, prepared
            cfg = load_config(out / "config.yaml", [f"ticks={ticks}"] if ticks is not None else [])
            check_config(cfg, comm.ranks.world)
            prepared = runs._prepare(cfg)

        _agree(comm, prepare)
        assert cfg is not None
        ledger = stack.enter_context(_ledger_path(out, comm.ranks))
        run = _build(out, cfg, prepared, comm, ledger)
        try:
            loaded: list[checkpoint.Loaded] = []
            _agree(comm, lambda: loaded.append(checkpoint.load(out, run.hive.core, runs.state_validator(cfg, sorted(run.swarm.data), ticks))))
            runs._restore(run, loaded[0])

            def ledger_checked() -> None:
                if not lead:
                    return
                mark = loaded[0].state.get("ledger")
                if mark is not None:
                    run.swarm.ledger.verify_mark(mark)
                    runs._refuse_unreplayed_feedback(run, mark)
                if ticks is not None:
                    atomic_write_text(out / "config.yaml", dump_config(cfg))
                run.swarm.ledger.rollback_to(run.swarm.tick_no)
                runs._record_missing_checkpoint(run)

            _agree(comm, ledger_checked)
            return _loop(run, comm, progress)
        finally:
            run.swarm.ledger.close()
