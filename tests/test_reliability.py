"""Issue 20: attacks on the run directory, the checkpoint, the ledger and the inputs.

Each test reproduces one attack (it failed on the code before the fix) and checks the
refusal: exit code 2, one line naming the problem, nothing written or removed.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lorahive.cli.main import app
from lorahive.config import dump_config
from lorahive.runtime import run as runs
from tiny_runs import config_tree, tiny_config

runner = CliRunner()


@pytest.fixture(scope="module")
def finished(base_dir, tmp_path_factory) -> Path:
    """A finished 2-tick tiny run (copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    runs.start(tiny_config(base_dir, observe={"retention_tokens": 0, "influence_examples": 0}), out)
    return out


@pytest.fixture
def run_dir(finished, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


def _config_file(base_dir: Path, path: Path, **extra) -> Path:
    tree = config_tree(base_dir, observe={"retention_tokens": 0, "influence_examples": 0}) | extra
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def _ledger_rows(run: Path) -> int:
    with sqlite3.connect(run / "ledger.sqlite") as db:
        return sum(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("proposals", "updates", "scores", "checkpoints", "events"))


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(folder.rglob("*")) if p.name != ".lock"}


# ---------------------------------------------------------------------- 1. one writer per run directory
def _hold_lock(run: Path):
    f = open(run / ".lock", "a+")  # noqa: SIM115
    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    return f


def test_resume_while_another_process_writes_the_run_is_refused(run_dir):
    rows = _ledger_rows(run_dir)
    holder = _hold_lock(run_dir)
    try:
        res = runner.invoke(app, ["resume", str(run_dir), "--ticks", "3"])
    finally:
        holder.close()
    assert res.exit_code == 2, res.output
    assert "in use by another lorahive process" in res.output
    assert _ledger_rows(run_dir) == rows


def test_run_force_and_import_while_locked_are_refused(base_dir, run_dir, tmp_path):
    cfg = _config_file(base_dir, tmp_path / "c.yaml")
    before = _listing(run_dir)
    holder = _hold_lock(run_dir)
    try:
        res = runner.invoke(app, ["run", str(cfg), "--out", str(run_dir), "--force"])
        imp = runner.invoke(app, ["import-peft", str(run_dir), str(tmp_path), "--level", "swarm"])
    finally:
        holder.close()
    assert res.exit_code == 2 and "in use" in res.output, res.output
    assert imp.exit_code == 2 and "in use" in imp.output, imp.output
    assert _listing(run_dir) == before


def test_a_killed_lock_holder_does_not_block_a_later_resume(run_dir):
    code = f"import fcntl,sys,time; f=open({str(run_dir / '.lock')!r},'a+'); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    res = runner.invoke(app, ["resume", str(run_dir), "--ticks", "3"])
    assert res.exit_code == 0, res.output
    assert json.loads((run_dir / "metrics.json").read_text())["ticks"] == 3
