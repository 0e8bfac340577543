"""Crash safety: a real ``lorahive run`` SIGKILLed again and again, resumed each time, ends
exactly where an uninterrupted run ends.

Kills land at three kinds of moment: while a checkpoint is being written (``.checkpoint.tmp``
exists), while the new checkpoint is being swapped in (``checkpoint.prev`` exists), and at a
random time inside the tick loop. After every kill the ledger passes ``PRAGMA
integrity_check`` and whatever checkpoint is on disk verifies. ``LORAHIVE_CRASH_KILLS`` sets
the number of kills (default 4, kept small because every restart pays Python's import time).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import torch

from lorahive.config import dump_config
from lorahive.runtime import run as runs
from lorahive.store import checkpoint
from tiny_runs import checkpoint_tensors, tiny_config

KILLS = int(os.environ.get("LORAHIVE_CRASH_KILLS", "4"))
TICKS = 6
CLI = [sys.executable, "-m", "lorahive.cli.main"]
#: topology on, quick to act, so the stack changes within the run's ticks
TOPOLOGY = ["mechanisms.topology.enabled=true", "mechanisms.topology.window=3", "mechanisms.topology.checks=1", "mechanisms.topology.cooldown=1", "mechanisms.topology.split_excess=0.001"]


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def _wait_for(proc: subprocess.Popen, seen, times: int, limit: float = 60.0) -> bool:
    """Poll until ``seen()`` has been true on ``times`` separate appearances; False if the process ended."""
    count, was, end = 0, False, time.time() + limit
    while proc.poll() is None and time.time() < end:
        now = seen()
        if now and not was:
            count += 1
            if count >= times:
                return True
        was = now
        time.sleep(0.0005)
    return False


def _kill_at_some_moment(proc: subprocess.Popen, run: Path, rng: random.Random) -> str:
    """SIGKILL ``proc`` mid-checkpoint, mid-swap or at a random time in the tick loop."""
    how = rng.choice(["mid-checkpoint", "mid-swap", "random"])
    if how == "mid-checkpoint":
        hit = _wait_for(proc, lambda: (run / ".checkpoint.tmp").exists(), rng.randint(1, 3))
    elif how == "mid-swap":
        hit = _wait_for(proc, lambda: (run / "checkpoint.prev").exists(), rng.randint(1, 2))
    else:
        hit = _wait_for(proc, lambda: (run / ".checkpoint.tmp").exists(), 1)
        time.sleep(rng.uniform(0.0, 1.5))
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return how if hit else f"{how} (ended first)"


def _check_after_crash(run: Path) -> int | None:
    """The ledger is intact and any checkpoint on disk verifies; returns its tick."""
    if (run / "ledger.sqlite").exists():
        db = sqlite3.connect(run / "ledger.sqlite")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
    try:
        ckpt = checkpoint.locate(run)
    except checkpoint.CheckpointError:
        return None
    checkpoint._verify(ckpt)  # raises on a torn checkpoint
    return int(json.loads((ckpt / "state.json").read_text())["tick"])


_ROWS = {
    "proposals": "tick, agent, level, norm, cosine, weight, decision, reason, quality, reputation",
    "updates": "tick, level, norm, n_proposals, n_accepted, strategy",
    "scores": "tick, agent, task_type, phase, quality, n",
    "checkpoints": "tick",
    "events": "tick, kind, detail",
}


def _ledger(run: Path) -> dict[str, list[tuple]]:
    db = sqlite3.connect(run / "ledger.sqlite")
    out = {t: sorted(db.execute(f"SELECT {cols} FROM {t}").fetchall()) for t, cols in _ROWS.items()}
    out["events"] = [e for e in out["events"] if e[1] not in ("resume", "tick_seconds")]  # wall times differ by design
    db.close()
    return out


def _state(run: Path) -> dict:
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    state.pop("elapsed")
    state.pop("ledger")  # row ids and a digest over timestamps and resume events: differ by design; the rows are compared in _ledger
    return state


def _metrics(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    m.pop("wall_time_s")
    m.pop("tick_seconds")  # wall times: differ by design
    return m


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(base_dir, tmp_path):
    cfg = tiny_config(base_dir, ["mechanisms.entropy_budget.enabled=true", "mechanisms.vertical_resonance.enabled=true", "mechanisms.consensus.enabled=true", "mechanisms.context_modes.enabled=true", *TOPOLOGY], ticks=TICKS, aggregation={"strategy": "weighted", "max_norm": 1.0})  # every mechanism on
    (tmp_path / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    runs.start(cfg, tmp_path / "straight")
    run, rng = tmp_path / "crashed", random.Random(int(os.environ.get("LORAHIVE_CRASH_SEED", "0")))
    log = []

    for _ in range(KILLS):
        has_checkpoint = _check_after_crash(run) is not None if run.exists() else False
        args = ["resume", str(run)] if has_checkpoint else ["run", str(tmp_path / "config.yaml"), "--out", str(run), "--force"]
        proc = _spawn(args)
        how = _kill_at_some_moment(proc, run, rng)
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read().decode() if proc.stderr else ""
        log.append((args[0], how, _check_after_crash(run)))
    if _check_after_crash(run) is None:
        assert subprocess.run([*CLI, "run", str(tmp_path / "config.yaml"), "--out", str(run), "--force"], capture_output=True).returncode == 0
    done = subprocess.run([*CLI, "resume", str(run)], capture_output=True, text=True)
    again = subprocess.run([*CLI, "resume", str(run)], capture_output=True, text=True)  # as after a kill in the final write

    assert done.returncode == 0, done.stderr
    assert again.returncode == 0, again.stderr
    assert any(how.startswith("mid-") and "ended" not in how for _, how, _ in log) or KILLS < 3, log
    a, b = checkpoint_tensors(tmp_path / "straight"), checkpoint_tensors(run)
    assert a.keys() == b.keys()
    for k in a:
        if k.endswith("rng/torch"):
            continue  # the process-wide torch RNG: nothing in a tick draws from it, and the reference ran in this process
        assert torch.equal(a[k], b[k]), (k, log)
    assert _state(tmp_path / "straight") == _state(run)
    assert _ledger(tmp_path / "straight") == _ledger(run), log
    assert _metrics(tmp_path / "straight") == _metrics(run)
