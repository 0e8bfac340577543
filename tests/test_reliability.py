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
from lorahive.runtime import precheck, rundir
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


def _refused(res, *words: str) -> str:
    """Exit code 2, no traceback, one ``error:`` line holding ``words``; returns that line."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and not res.output.split(lines[0], 1)[1].strip(), res.output
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# ---------------------------------------------------------------------- 2. never delete what the run does not own
@pytest.mark.parametrize("force", [[], ["--force"]])
def test_run_into_a_folder_with_foreign_files_removes_nothing(base_dir, tmp_path, force):
    cfg = _config_file(base_dir, tmp_path / "c.yaml")
    out = tmp_path / "mine"
    (out / "checkpoint.prev").mkdir(parents=True)
    (out / "checkpoint.prev" / "notes.txt").write_text("keep me")
    (out / "report.html").write_text("<p>my report</p>")
    before = _listing(out)
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out), *force])
    _refused(res, "holds no lorahive run", "report.html")
    assert _listing(out) == before


def test_force_over_a_symlinked_checkpoint_is_refused_and_the_target_kept(base_dir, run_dir, tmp_path):
    cfg = _config_file(base_dir, tmp_path / "c.yaml")
    elsewhere = tmp_path / "precious"
    shutil.move(run_dir / "checkpoint", elsewhere)
    (run_dir / "checkpoint").symlink_to(elsewhere)
    before = _listing(elsewhere)
    res = runner.invoke(app, ["run", str(cfg), "--out", str(run_dir), "--force"])
    _refused(res, "symbolic link")
    assert _listing(elsewhere) == before and (run_dir / "checkpoint").is_symlink()


# ---------------------------------------------------------------------- 3. exit code 2, nothing written
@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("base=/nonexistent", "base"),
        ("suite.task_types=[no_such_type]", "suite"),
        ("suite.support=1000000000", "suite.support"),
        ("threads=100000", "threads"),
    ],
)
def test_values_that_fail_after_validation_exit_2_and_write_nothing(base_dir, tmp_path, override, field):
    cfg = _config_file(base_dir, tmp_path / "c.yaml")
    out = tmp_path / "new" / "run"
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out), override])
    _refused(res, field)
    assert not (tmp_path / "new").exists()


def test_agents_beyond_memory_are_refused_before_anything_is_written(base_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(precheck, "available_memory", lambda device: 1 << 20)
    cfg = _config_file(base_dir, tmp_path / "c.yaml")
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out), "agents=60000"])
    _refused(res, "agents", "GiB")
    assert not out.exists()


def test_a_failure_before_the_first_checkpoint_leaves_the_folder_as_it_was(base_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine.txt").write_text("mine")

    def boom(run):
        raise RuntimeError("simulated failure in the first evaluation")

    monkeypatch.setattr(runs, "evaluate_run", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        runs.start(tiny_config(base_dir), out)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


# ---------------------------------------------------------------------- 7. clean errors
def test_out_that_is_a_file_is_one_clean_error(base_dir, tmp_path):
    cfg = _config_file(base_dir, tmp_path / "c.yaml")
    (tmp_path / "afile").write_text("x")
    _refused(runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "afile")]), "not a directory")
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize(("code", "word"), [(28, "no space left"), (30, "cannot write")])
def test_full_disk_or_read_only_out_is_one_clean_error_and_leaves_nothing(base_dir, tmp_path, monkeypatch, code, word):
    def full(path, text):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(rundir, "atomic_write_text", full)  # the first thing a run writes: its config
    cfg = _config_file(base_dir, tmp_path / "c.yaml")
    out = tmp_path / "run"
    _refused(runner.invoke(app, ["run", str(cfg), "--out", str(out)]), word)
    assert not out.exists()


def test_bad_yaml_in_an_override_is_one_clean_error(base_dir, tmp_path):
    cfg = _config_file(base_dir, tmp_path / "c.yaml")
    _refused(runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "run"), "ticks=[unclosed"]), "ticks=[unclosed")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- 4. checkpoint state validated in full
def _reseal_state(run: Path, edit) -> None:
    """Edit state.json and recompute the manifest's hashes, as an attacker would."""
    import hashlib

    ckpt = run / "checkpoint"
    state = json.loads((ckpt / "state.json").read_text())
    edit(state)
    (ckpt / "state.json").write_text(json.dumps(state))
    manifest = json.loads((ckpt / "manifest.json").read_text())
    data = (ckpt / "state.json").read_bytes()
    manifest["state.json"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def _set(path: str, value):
    def edit(state):
        *head, last = path.split(".")
        node = state
        for k in head:
            node = node[k]
        node[last] = value

    return edit


def _phantom(state):
    state["agents"].append("ghost")
    state["agents_state"]["ghost"] = {"task_type": "agnews", "reputation": 0.5, "solved": 0}


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (_set("agents_state.agent0.reputation", "nan"), "agents_state.agent0.reputation"),
        (_set("agents_state.agent0.reputation", float("nan")), "agents_state.agent0.reputation"),
        (_set("agents_state.agent1.task_type", "no_such_type"), "agents_state.agent1.task_type"),
        (_set("ppl_before", [1, 2]), "ppl_before"),
        (_set("quality_before.agent0.agnews", 5), "quality_before.agent0.agnews"),
        (_set("tick", 10**9), "tick"),
        (_phantom, "agents"),
    ],
)
def test_a_resealed_state_with_bad_values_is_refused_naming_the_field(run_dir, edit, field):
    _reseal_state(run_dir, edit)
    before = _listing(run_dir)
    res = runner.invoke(app, ["resume", str(run_dir)])
    _refused(res, "state.json", field)
    assert _listing(run_dir) == before


def test_resume_with_ticks_below_the_tick_reached_is_refused_and_keeps_config(run_dir):
    before = _listing(run_dir)
    _refused(runner.invoke(app, ["resume", str(run_dir), "--ticks", "1"]), "--ticks 1", "tick 2")
    assert _listing(run_dir) == before


# ---------------------------------------------------------------------- 5. no unbounded work from input
def test_a_backtracking_rank_pattern_is_refused_at_once(tmp_path):
    from lorahive.store.peft import _number

    t = time.time()
    with pytest.raises(ValueError, match="module-name suffixes only"):
        _number({"rank_pattern": {"(.|.)*Z": 4}, "r": 2}, "rank_pattern", "r", "model.layers.0.self_attn." + "q" * 40)
    assert time.time() - t < 1.0
    assert _number({"rank_pattern": {"self_attn.q_proj": 4}, "r": 2}, "rank_pattern", "r", "model.layers.0.self_attn.q_proj") == 4.0
    assert _number({"rank_pattern": {"q_proj": 4}, "r": 2}, "rank_pattern", "r", "model.layers.0.self_attn.k_proj") == 2.0


def test_a_config_symlinked_to_dev_zero_is_refused_by_bytes_read(tmp_path):
    (tmp_path / "c.yaml").symlink_to("/dev/zero")
    _refused(runner.invoke(app, ["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]), "too large")


def test_a_huge_stream_order_is_checked_in_linear_time_and_echoed_short(base_dir, tmp_path):
    from lorahive.config import ConfigError, parse_config

    order = [f"t{i}" for i in range(170_000)] + ["t1"]
    t = time.time()
    with pytest.raises(ConfigError, match="stream.order") as e:
        parse_config({"stream": {"order": order}})
    assert time.time() - t < 10.0 and len(str(e.value)) < 2000


# ---------------------------------------------------------------------- 8. smaller holes (config)
@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("agents: true\n", ["agents"]),
        ("ticks: 2\nticks: 3\n", ["duplicate key", "ticks"]),
        ("", ["empty"]),
        ("levels:\n- {name: swarm, rank: true, alpha: 4, scope: shared, inertia: 0.5, lr: 0.01}\n", ["levels.0.rank"]),
    ],
)
def test_loose_configs_are_refused(tmp_path, text, words):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text, encoding="utf-8")
    _refused(runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "run")]), *words)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- 6. the ledger is part of the run
def test_resume_without_the_ledger_is_refused(run_dir):
    (run_dir / "ledger.sqlite").unlink()
    before = _listing(run_dir)
    _refused(runner.invoke(app, ["resume", str(run_dir), "--ticks", "3"]), "ledger.sqlite", "missing")
    assert _listing(run_dir) == before


def test_resume_with_a_truncated_ledger_is_one_clean_error(run_dir):
    data = (run_dir / "ledger.sqlite").read_bytes()
    (run_dir / "ledger.sqlite").write_bytes(data[:200])
    _refused(runner.invoke(app, ["resume", str(run_dir), "--ticks", "3"]), "ledger")


def test_resume_with_a_ledger_behind_the_checkpoint_is_refused(run_dir):
    with sqlite3.connect(run_dir / "ledger.sqlite") as db:
        db.execute("DELETE FROM proposals WHERE tick = 2")
    rows = _ledger_rows(run_dir)
    _refused(runner.invoke(app, ["resume", str(run_dir), "--ticks", "3"]), "do not match the checkpoint")
    assert _ledger_rows(run_dir) == rows


# ---------------------------------------------------------------------- 8. smaller holes (resume)
def test_a_changed_seed_in_config_yaml_is_refused_on_resume(run_dir):
    tree = yaml.safe_load((run_dir / "config.yaml").read_text())
    tree["seed"] = 5
    (run_dir / "config.yaml").write_text(yaml.safe_dump(tree))
    _refused(runner.invoke(app, ["resume", str(run_dir), "--ticks", "3"]), "seed", "changed since the checkpoint")


# ---------------------------------------------------------------------- 8. export
def test_export_refuses_to_overwrite_an_adapter_without_force(run_dir, tmp_path):
    out = tmp_path / "adapter"
    assert runner.invoke(app, ["export", str(run_dir), "--agent", "agent0", "--out", str(out)]).exit_code == 0
    (out / "adapter_config.json").write_text('{"mine": 1}')
    _refused(runner.invoke(app, ["export", str(run_dir), "--agent", "agent0", "--out", str(out)]), "--force")
    assert (out / "adapter_config.json").read_text() == '{"mine": 1}'
    assert runner.invoke(app, ["export", str(run_dir), "--agent", "agent0", "--out", str(out), "--force"]).exit_code == 0


def test_export_into_the_runs_own_checkpoint_is_refused(run_dir):
    before = _listing(run_dir)
    _refused(runner.invoke(app, ["export", str(run_dir), "--agent", "agent0", "--out", str(run_dir / "checkpoint" / "levels")]), "checkpoint")
    assert _listing(run_dir) == before
    assert runner.invoke(app, ["resume", str(run_dir), "--ticks", "3"]).exit_code == 0


def test_export_to_a_read_only_target_is_one_clean_error(run_dir, tmp_path, monkeypatch):
    import lorahive.store.peft as peft

    def read_only(*a, **k):
        raise OSError(30, os.strerror(30), str(tmp_path / "ro"))

    monkeypatch.setattr(peft.tempfile, "mkdtemp", read_only)
    _refused(runner.invoke(app, ["export", str(run_dir), "--agent", "agent0", "--out", str(tmp_path / "ro")]), "cannot write")
