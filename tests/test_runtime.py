"""Swarm runs on a tiny model: run directory, exact resume, refusals, NaN handling."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from lorahive.mechanisms.base import Action, Proposal, TickView
from lorahive.runtime import run as runs
from lorahive.runtime.rundir import prepare_dir
from lorahive.store.checkpoint import CheckpointError
from tiny_runs import checkpoint_tensors, tiny_config


def config(base_dir, **over):
    return tiny_config(base_dir, [f"{k}={v}" for k, v in over.items()])


def test_a_run_writes_its_directory_and_metrics(base_dir, tmp_path):
    result = runs.start(config(base_dir), tmp_path / "run")

    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "checkpoint", "ledger.sqlite", "metrics.json"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == result and metrics["ticks"] == 2 and metrics["finished"]
    assert set(metrics["agents"]) == {"agent0", "agent1", "agent2"}
    for a in metrics["agents"].values():
        assert set(a["quality_before"]) == set(a["quality_after"]) == {"agnews", "yelp"}
    assert metrics["swarm"]["accepted"] == 6 and metrics["swarm"]["rejected"] == 0
    db = sqlite3.connect(out / "ledger.sqlite")
    assert db.execute("SELECT COUNT(*) FROM proposals").fetchone()[0] == 6
    assert db.execute("SELECT COUNT(*) FROM updates").fetchone()[0] == 2
    assert db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 2


def test_resume_continues_exactly(base_dir, tmp_path):
    runs.start(config(base_dir, ticks=3), tmp_path / "straight")
    runs.start(config(base_dir, ticks=1), tmp_path / "split")

    runs.resume(tmp_path / "split", ticks=3)

    a, b = checkpoint_tensors(tmp_path / "straight"), checkpoint_tensors(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        if k.endswith("rng/torch"):
            continue
        assert torch.equal(a[k], b[k]), k
    sa = json.loads((tmp_path / "straight" / "checkpoint" / "state.json").read_text())
    sb = json.loads((tmp_path / "split" / "checkpoint" / "state.json").read_text())
    for key in ("tick", "accepted", "rejected", "agents_state", "agents", "level_states"):
        assert sa[key] == sb[key], key


def test_an_existing_run_is_refused_without_force(base_dir, tmp_path):
    runs.start(config(base_dir, ticks=1), tmp_path / "run")
    with pytest.raises(runs.RunDirError, match="already holds a run"):
        runs.start(config(base_dir, ticks=1), tmp_path / "run")
    runs.start(config(base_dir, ticks=1), tmp_path / "run", force=True)


def test_a_corrupted_checkpoint_is_refused_naming_the_file(base_dir, tmp_path):
    runs.start(config(base_dir, ticks=1), tmp_path / "run")
    target = tmp_path / "run" / "checkpoint" / "levels" / "agent.safetensors"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])

    with pytest.raises(CheckpointError, match="agent.safetensors: corrupted or truncated"):
        runs.resume(tmp_path / "run", ticks=2)
    assert target.read_bytes() == data[: len(data) // 2]  # nothing overwritten


class _NanProposal:
    """A solve-phase mechanism that adds a NaN copy of the first proposal."""

    name, phases, enabled = "nan_proposal", ("solve",), True

    def run(self, view: TickView) -> Action | None:
        honest = view.proposals[0]
        view.proposals.append(Proposal("agent0", honest.level, view.tick, {k: torch.full_like(v, float("nan")) for k, v in honest.delta.items()}))
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


def test_a_nan_proposal_is_rejected_and_logged_and_the_run_goes_on(base_dir, tmp_path):
    cfg = config(base_dir, ticks=1)
    prepare_dir(tmp_path / "run", force=False)
    run = runs._build(tmp_path / "run", cfg)
    swarm = run.swarm
    swarm.mechanisms.append(_NanProposal())
    before = {k: p.detach().clone() for k, p in run.hive.core.level_params("swarm").items()}
    ctx = swarm.tick()

    assert ctx.update is not None
    assert all(torch.isfinite(p).all() for p in run.hive.core.level_params("swarm").values())
    assert any(not torch.equal(before[k], p) for k, p in run.hive.core.level_params("swarm").items())
    rows = swarm.ledger.query("SELECT agent, decision, reason FROM proposals WHERE decision = 'rejected'")
    assert len(rows) == 1 and "nan" in rows[0]["reason"].lower()
    swarm.ledger.close()
