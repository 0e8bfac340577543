"""A stages run killed and resumed (runtime/stages.py) ends where an uninterrupted run ends; what a resume refuses.

The run is killed twice: a real SIGKILL of a child process in the middle of a checkpoint's
swap (the old checkpoint already ``checkpoint.prev``, the new one not yet in place: nothing
after it runs, the ledger is not closed), then, resumed in this process, stopped between two
checkpoints (ledger rows past the checkpoint's mark on disk). One child only: each pays
Python's import time (about 6 s of CPU here).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from lorahive.cli.main import app
from lorahive.config import dump_config, parse_stages_config
from lorahive.runtime import stages as runner
from lorahive.runtime.rundir import RunDirError
from lorahive.store import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes" / "stages"))
import recipe  # noqa: E402

LEVELS = [{"name": "swarm", "rank": 2, "alpha": 4, "scope": "shared", "inertia": 0.0, "lr": 5e-2}, {"name": "domain", "rank": 2, "alpha": 4, "scope": "shared", "inertia": 0.0, "lr": 3e-2}]
DATA = {"topics": {"source": "cl", "task_type": "agnews", "train": 8, "eval": 3, "max_prompt_tokens": 64}}
STAGES = [  # 3 + 3 + 2 steps, checkpoints after steps 0, 2, 3, 4, 6, 8
    {"objective": "sft", "data": "topics", "levels": ["swarm"], "steps": 3, "batch": 3, "budget": {"share": 0.5}},
    {"objective": "dpo", "data": "topics", "levels": ["domain"], "steps": 3, "batch": 3, "beta": 0.5, "scope": {"targets": ["q_proj", "v_proj"], "blocks": [1]}, "budget": {"max_norm": 0.2}},
    {"objective": "sft", "data": "topics", "levels": ["swarm"], "steps": 2, "batch": 3, "budget": {"share": 0.5}},
]
CHILD = r"""
import os, signal, sys
from pathlib import Path
from lorahive.config import load_stages_config
from lorahive.runtime import stages
from lorahive.store import checkpoint as ck

out, config, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
seen = {"n": 0}
real = ck.move_into_place
def move(src, dst):  # the n-th checkpoint: killed after the old one became checkpoint.prev, before the new one is in place
    if Path(dst).name == ck.NAME:
        seen["n"] += 1
        if seen["n"] == n:
            os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
ck.move_into_place = move
stages.start(load_stages_config(config), out)
"""


class _Killed(BaseException):
    """Stands in for a kill in this process: raised from the progress callback, so nothing of the step loop after it runs."""


def _stop_after(steps: int):
    seen = {"n": 0}

    def progress(tag: str, k: int, n: int) -> None:
        seen["n"] += 1
        if seen["n"] == steps:
            raise _Killed

    return progress


@pytest.fixture(scope="module")
def stage_base(tmp_path_factory) -> str:
    return str(recipe.tiny_base(tmp_path_factory.mktemp("stage-base"), recipe._texts({"data": DATA})))


def _config(base: str, **extra):
    return parse_stages_config({"base": base, "threads": 1, "levels": LEVELS, "data": DATA, "stages": STAGES, "total_norm": 1.0, "checkpoint_every": 2, **extra})


def _child(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env, timeout=120)


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    out = {f"stages/{k}": v for k, v in load_file(run / "stages.safetensors").items()}
    for f in sorted((run / checkpoint.NAME).rglob("*.safetensors")):
        if f.name != "extra.safetensors":  # the process-wide torch RNG state: nothing in a stage draws from it
            out.update({f"{f.relative_to(run)}/{k}": v for k, v in load_file(f).items()})
    return out


def _ledger(run: Path) -> dict[str, list]:
    db = sqlite3.connect(run / "ledger.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    events = [r for r in db.execute("SELECT tick, kind, detail FROM events ORDER BY id") if r[1] != "resume"]
    ticks = sorted(r[0] for r in db.execute("SELECT tick FROM checkpoints"))
    db.close()
    return {"events": events, "checkpoints": ticks}


def _state(run: Path) -> dict:
    state = json.loads((run / checkpoint.NAME / "state.json").read_text())
    state.pop("elapsed"), state.pop("ledger")  # wall time; row ids and a digest over timestamps
    return state


def _metrics(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    m.pop("seconds")
    return m


def test_a_stages_run_sigkilled_mid_swap_and_between_checkpoints_resumes_to_the_uninterrupted_result(stage_base, tmp_path):
    cfg = _config(stage_base)
    (tmp_path / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    runner.start(cfg, tmp_path / "straight")
    run = tmp_path / "crashed"

    first = _child(str(run), str(tmp_path / "config.yaml"), "3")  # the checkpoint after step 3
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert (run / checkpoint.PREV).is_dir() and not (run / checkpoint.NAME).exists()
    assert json.loads((checkpoint.locate(run) / "state.json").read_text())["tick"] == 2
    with pytest.raises(_Killed):  # resumed at step 2; stopped after step 5, its last checkpoint after step 4
        runner.resume(run, progress=_stop_after(3))
    assert json.loads((checkpoint.locate(run) / "state.json").read_text())["tick"] == 4
    assert json.loads((run / "metrics.json").read_text())["finished"] is False
    runner.resume(run)
    runner.resume(run)  # a finished run resumed again (as after a kill while writing its metrics) measures it again

    a, b = _tensors(tmp_path / "straight"), _tensors(run)
    assert a.keys() == b.keys() and any(k.startswith("stages/") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _state(tmp_path / "straight") == _state(run)
    assert _ledger(tmp_path / "straight") == _ledger(run)
    assert _metrics(tmp_path / "straight") == _metrics(run)
    assert _metrics(run)["finished"] is True


def _killed_after(cfg, out: Path, steps: int) -> None:
    with pytest.raises(_Killed):
        runner.start(cfg, out, progress=_stop_after(steps))


def test_a_resume_refuses_a_changed_config_a_missing_ledger_and_ticks_and_changes_nothing(stage_base, tmp_path):
    run = tmp_path / "run"
    _killed_after(_config(stage_base), run, 3)
    text = (run / "config.yaml").read_text()
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}

    tree = yaml.safe_load(text)
    tree["stages"][0]["steps"] = 5
    (run / "config.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(checkpoint.CheckpointError, match=r"config\.yaml: stages\.0\.steps changed since the checkpoint \(stages\.0\.steps: 3 → 5\)"):
        runner.resume(run)
    (run / "config.yaml").write_text(text)
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == before

    res = CliRunner().invoke(app, ["resume", str(run), "--ticks", "9"])
    assert res.exit_code == 2 and "is a stages run" in res.output and "drop --ticks" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["export", str(run), "--agent", "learner", "--out", str(tmp_path / "adapter")])
    assert res.exit_code == 2 and "is a stages run" in res.output and not (tmp_path / "adapter").exists()
    (run / "ledger.sqlite").rename(tmp_path / "ledger.sqlite")
    with pytest.raises(RunDirError, match="ledger.sqlite is missing"):
        runner.resume(run)
