"""Agents spread over 2 gloo CPU ranks (torchrun): the run equals the single-process run, and a
killed rank stops the whole job, leaving a run that resumes to the same end.

The config runs the default mechanisms (screening, emergent inertia, replay, consolidation with
its bandwidth queues, health) with an attack and robust aggregation with rejection, so the
ledger holds real decisions; :func:`test_every_mechanism_that_ranks_run_equals_one_process`
adds a config in which migrations, consensus and the entropy budget act on every tick. What
ranks refuse (``lorahive.runtime.ranks.UNSUPPORTED``) is refused before anything starts.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lorahive.config import ConfigError, dump_config
from lorahive.runtime import run as runs
from lorahive.runtime.ranks import UNSUPPORTED
from tiny_runs import LEVELS, checkpoint_tensors, tiny_config

TICKS = 4


def _config(base_dir: Path):
    overrides = ["mechanisms.replay.probability=1.0", "mechanisms.replay.fraction=0.5", "attack.fraction=0.25"]
    stream = {"order": ["agnews", "yelp"], "ticks_per_stage": 2, "method": "hive"}  # R's rows are evaluated over the ranks
    return tiny_config(base_dir, overrides, ticks=TICKS, agents=4, stream=stream, aggregation={"strategy": "median", "max_norm": 1.0, "reject_norm_ratio": 3.0})


#: Every mechanism that runs on several ranks, made to act within the test's ticks: consolidation checks every tick and
#: migrates after one stable check, through the bandwidth queues, on each channel (context → agent between per-agent
#: slots, agent → swarm into the shared swarm level, swarm → domain between shared levels); consensus moves the agents'
#: common pattern into the swarm; the entropy budget moves screening's thresholds. A migration moves rank 1 of rank 2,
#: so a slot keeps a real rest (moving all of it leaves rounding noise, from which the slot then learns).
BUSY = [
    "mechanisms.consolidation.every=1", "mechanisms.consolidation.checks=1", "mechanisms.consolidation.threshold=0.04",
    "mechanisms.consolidation.signature_rank=1", "mechanisms.entropy_budget.enabled=true",
    "mechanisms.consensus.enabled=true", "mechanisms.consensus.threshold=0.0", "mechanisms.consensus.rank=1",
]  # fmt: skip


def _busy_config(base_dir: Path):
    levels = [{"name": "domain", "rank": 2, "alpha": 4, "scope": "shared", "inertia": 0.9, "lr": 1e-2}, *LEVELS]
    return tiny_config(base_dir, BUSY, ticks=TICKS, agents=4, levels=levels, aggregation={"strategy": "mean", "max_norm": 1.0})


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LORAHIVE_DIST_TIMEOUT": "60"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m", "lorahive", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def _finish(proc: subprocess.Popen, limit: float = 240.0) -> tuple[int, str]:
    _, err = proc.communicate(timeout=limit)
    return proc.returncode, err


_DECISIONS = {
    "proposals": "tick, agent, level, decision, reason",
    "updates": "tick, level, n_proposals, n_accepted, strategy",
    "scores": "tick, agent, task_type, phase, quality, n",
    "checkpoints": "tick",
}


def _ledger(run: Path) -> dict[str, list[tuple]]:
    db = sqlite3.connect(run / "ledger.sqlite")
    out = {t: sorted(db.execute(f"SELECT {cols} FROM {t}").fetchall()) for t, cols in _DECISIONS.items()}
    out["events"] = sorted(db.execute("SELECT tick, kind FROM events WHERE kind NOT IN ('resume', 'tick_seconds')").fetchall())
    out["norms"] = sorted(db.execute("SELECT tick, agent, norm FROM proposals").fetchall())
    db.close()
    return out


def _assert_close_through_adam(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    """Equal up to float noise: a rank's batches have other sizes, so sums round differently.

    Adam divides a gradient by its running RMS, so an entry whose gradient is at the rounding
    level may step either way: such entries (at most 1 in 200, each within 0.04, two of the
    tests' largest step of 0.018) may differ; every other entry is allclose.
    """
    off = ~torch.isclose(a, b, rtol=1e-4, atol=2e-5)
    assert int(off.sum()) <= max(1, a.numel() // 200), (name, int(off.sum()), a.numel())
    assert a.numel() == 0 or float((a - b).abs().max()) <= 0.04, name


def _mechanism_events(run: Path) -> list[tuple[int, str, dict]]:
    """Every mechanism's ledger events in tick order, with what each did."""
    db = sqlite3.connect(run / "ledger.sqlite")
    rows = db.execute("SELECT tick, kind, detail FROM events WHERE kind LIKE 'mechanism:%' ORDER BY tick, id").fetchall()
    db.close()
    return [(t, k, json.loads(d)) for t, k, d in rows]


def _leaves(tree, prefix: str = "") -> dict[str, object]:
    """Every leaf of a JSON tree, keyed by its path."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _leaves(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _leaves(sub, f"{prefix}{i}.").items()}
    return {prefix: tree}


def _assert_same_events(single: Path, multi: Path) -> None:
    """The same mechanism events: the same decisions, counts and names, numbers within rounding."""
    a, b = _mechanism_events(single), _mechanism_events(multi)
    assert [e[:2] for e in a] == [e[:2] for e in b]
    for (tick, kind, da), (_, _, db) in zip(a, b, strict=True):
        la, lb = _leaves(da), _leaves(db)
        assert la.keys() == lb.keys(), (tick, kind)
        for path, x in la.items():
            y = lb[path]
            if isinstance(x, float) and isinstance(y, float):
                assert y == pytest.approx(x, rel=1e-3, abs=1e-5), (tick, kind, path)
            else:
                assert x == y, (tick, kind, path)


def _assert_same_tensors(single: Path, multi: Path, by_function: bool = False) -> None:
    """Every checkpoint tensor allclose; consolidation's signatures as subspaces (a singular vector's sign is free).

    ``by_function``: levels are compared by each slot's ΔW = B·A, not by their factors — after a migration a slot's
    factors hold its rest plus components of rounding size, whose directions are rounding.
    """
    a, b = checkpoint_tensors(single), checkpoint_tensors(multi)
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k].double(), b[k].double()
        if k.endswith("rng/torch") or by_function and k.startswith("levels/") and k.endswith(("/A", "/B")):
            continue
        if "/sig/" in k:
            x, y = x @ x.T, y @ y.T  # (out, out) projector onto the signature's subspace
        _assert_close_through_adam(x, y, k)
    for k in (k for k in a if by_function and k.startswith("levels/") and k.endswith("/B")):
        x, y = (t[k].double() @ t[k.removesuffix("B") + "A"].double() for t in (a, b))  # (slots, out, in)
        assert torch.allclose(x, y, rtol=1e-3, atol=1e-3 * float(x.abs().max())), k


def _assert_same_run(single: Path, multi: Path, by_function: bool = False) -> None:
    _assert_same_tensors(single, multi, by_function)
    la, lb = _ledger(single), _ledger(multi)
    norms_a, norms_b = la.pop("norms"), lb.pop("norms")
    assert la == lb
    assert [r[:2] for r in norms_a] == [r[:2] for r in norms_b]
    assert all(x[2] is None and y[2] is None or abs(x[2] - y[2]) <= 1e-4 * max(1.0, abs(x[2])) for x, y in zip(norms_a, norms_b, strict=True))
    _assert_same_events(single, multi)
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (single, multi))
    assert mb["distributed"]["world_size"] == 2 and mb["distributed"]["bytes_per_tick"]["proposals"] > 0
    assert ma["agents"] == mb["agents"] and ma["swarm"] == mb["swarm"] and ma["ticks"] == mb["ticks"] == TICKS
    assert ma.get("cl") == mb.get("cl")  # the accuracy matrix R and ACC/BWT/FWT
    assert _numbers(ma["retention"]) == pytest.approx(_numbers(mb["retention"]), rel=1e-4)
    assert _numbers(ma["influence"]) == pytest.approx(_numbers(mb["influence"]), rel=1e-3, abs=1e-4)


def _numbers(tree, prefix: str = "") -> dict[str, float]:
    """Every number of a metrics subtree, keyed by its path."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _numbers(sub, f"{prefix}{key}.").items()}
    return {prefix: float(tree)} if isinstance(tree, int | float) else {}


@pytest.fixture(scope="module")
def single(base_dir, tmp_path_factory):
    """The reference: the same config and seed in one process."""
    out = tmp_path_factory.mktemp("single") / "run"
    runs.start(_config(base_dir), out)
    rows = sqlite3.connect(out / "ledger.sqlite").execute("SELECT decision, COUNT(*) FROM proposals GROUP BY decision").fetchall()
    assert dict(rows).get("rejected", 0) > 0 and dict(rows).get("accepted", 0) > 0  # the ledger holds real decisions
    return out


def test_two_gloo_ranks_equal_one_process(base_dir, tmp_path, single):
    (tmp_path / "config.yaml").write_text(dump_config(_config(base_dir)), encoding="utf-8")
    code, err = _finish(_torchrun(["run", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "multi")]))
    assert code == 0, err
    _assert_same_run(single, tmp_path / "multi")
    assert json.loads((tmp_path / "multi" / "metrics.json").read_text())["distributed"]["bytes_per_tick"]["mechanisms"] > 0


def _acted(run: Path) -> dict[str, object]:
    """What the busy config's mechanisms did in ``run``: channels that migrated, the most patterns queued, consensus."""
    events = _mechanism_events(run)
    moved = {m["channel"] for _, k, d in events if k == "mechanism:bandwidth" for m in d["migrations"] if m["accepted"]}
    queued = max((n for _, k, d in events if k == "mechanism:bandwidth" for n in d["queued"].values()), default=0)
    clusters = [d["cluster"] for _, k, d in events if k == "mechanism:consensus" and d["found"]]
    budget = [lv for _, k, d in events if k == "mechanism:entropy_budget" for lv, v in d["levels"].items() if v["moved"]]
    return {"moved": moved, "queued": queued, "clusters": clusters, "budget": budget}


def test_every_mechanism_that_ranks_run_equals_one_process(base_dir, tmp_path):
    cfg = _busy_config(base_dir)
    runs.start(cfg, tmp_path / "single")
    acted = _acted(tmp_path / "single")
    assert acted["moved"] == {"context→agent", "agent→swarm", "swarm→domain"} and acted["queued"] > 0, acted
    assert any({"agent0", "agent1"} <= set(c) for c in acted["clusters"]) and acted["budget"], acted  # a cluster over both ranks
    (tmp_path / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")

    code, err = _finish(_torchrun(["run", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "multi")]))

    assert code == 0, err
    _assert_same_run(tmp_path / "single", tmp_path / "multi", by_function=True)


class _Stop(Exception):
    pass


def _stop_after(ticks: int):
    def progress(done: int, total: int, ctx) -> None:
        if done >= ticks:
            raise _Stop  # after that tick's checkpoint, as a crash there would
    return progress


def test_a_single_process_run_resumes_on_two_ranks_with_nproc(base_dir, tmp_path, single):
    run = tmp_path / "moved"
    with pytest.raises(_Stop):
        runs.start(_config(base_dir), run, progress=_stop_after(2))  # its checkpoint knows nothing of ranks
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LORAHIVE_DIST_TIMEOUT": "60"}
    done = subprocess.run([sys.executable, "-m", "lorahive", "resume", str(run), "--nproc", "2"], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr
    _assert_same_run(single, run)


def _rank_pid(launcher: int, rank: int, limit: float = 60.0) -> int:
    """The pid of torchrun's worker of ``rank`` (its child with ``RANK=rank`` in its environment)."""
    end = time.time() + limit
    while time.time() < end:
        for task in Path(f"/proc/{launcher}/task").iterdir():
            for child in (task / "children").read_text().split():
                try:
                    env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if f"RANK={rank}".encode() in env:
                    return int(child)
        time.sleep(0.05)
    raise AssertionError(f"no worker of rank {rank} under torchrun {launcher}")


def test_a_killed_rank_fails_the_whole_run_and_it_resumes_to_the_same_end(base_dir, tmp_path, single):
    (tmp_path / "config.yaml").write_text(dump_config(_config(base_dir)), encoding="utf-8")
    run = tmp_path / "killed"
    proc = _torchrun(["run", str(tmp_path / "config.yaml"), "--out", str(run)])
    victim = _rank_pid(proc.pid, 1)
    end = time.time() + 180
    while not (run / "checkpoint" / "manifest.json").exists() and time.time() < end and proc.poll() is None:
        time.sleep(0.02)
    os.kill(victim, signal.SIGKILL)
    code, err = _finish(proc, 120)

    assert code != 0, "the job went on without rank 1"
    tick = json.loads((run / "checkpoint" / "state.json").read_text())["tick"]
    assert 1 <= tick < TICKS, tick  # killed mid-run, with a good checkpoint left
    assert sqlite3.connect(run / "ledger.sqlite").execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    code, err = _finish(_torchrun(["resume", str(run)]))
    assert code == 0, err
    _assert_same_run(single, run)


def test_the_default_mechanisms_run_on_two_ranks_and_the_others_are_refused(base_dir):
    from lorahive.mechanisms.registry import DEFAULT_FACTORIES, build_mechanisms
    from lorahive.runtime.ranks import check_supported

    cfg = tiny_config(base_dir, ticks=1)  # every mechanism on by default
    check_supported(cfg, build_mechanisms(cfg, cfg.agent_names(), DEFAULT_FACTORIES), 2)
    busy = tiny_config(base_dir, BUSY, ticks=1)
    check_supported(busy, build_mechanisms(busy, busy.agent_names(), DEFAULT_FACTORIES), 2)
    topology = tiny_config(base_dir, ["mechanisms.topology.enabled=true"], ticks=1)
    mechanisms = build_mechanisms(topology, topology.agent_names(), DEFAULT_FACTORIES)
    check_supported(topology, mechanisms, 1)  # one process: everything runs
    with pytest.raises(ConfigError, match=r"mechanisms\.topology: not supported with nproc > 1 .*enabled=false"):
        check_supported(topology, mechanisms, 2)
    with pytest.raises(ConfigError, match=r"agents: 3 agents over 4 ranks"):
        check_supported(cfg, build_mechanisms(cfg, cfg.agent_names(), DEFAULT_FACTORIES), 4)
    assert not {"screening", "inertia", "consolidation", "bandwidth", "entropy_budget", "consensus"} & set(UNSUPPORTED)


def _sync_worker(rank: int, init: str, base_dir: str, result: str) -> None:
    """One of 2 gloo ranks: build the run's swarm, check the hash, nudge rank 1's swarm level by 1e-7, check again."""
    import torch.distributed as dist

    from lorahive.runtime import distributed
    from lorahive.runtime.ranks import Comm, OutOfSync, Ranks, check_in_sync

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    cfg = _config(Path(base_dir))
    comm = Comm(Ranks(rank, 2, torch.device("cpu")))
    run = distributed._build(Path(result).parent, cfg, runs._prepare(cfg), comm, Path(result).with_suffix(f".{rank}.sqlite"))
    said = []
    for nudge in (False, True):
        if nudge and rank == 1:
            with torch.no_grad():
                next(iter(run.hive.core.banks("swarm"))).B[0, 0, 0] += 1e-7
        try:
            check_in_sync(comm, run.swarm)
            said.append("in sync")
        except OutOfSync as e:
            said.append(str(e))
    Path(f"{result}.{rank}").write_text(json.dumps(said), encoding="utf-8")
    dist.destroy_process_group()


def test_a_shared_level_that_differs_on_one_rank_stops_the_run_at_the_check(base_dir, tmp_path):
    import torch.multiprocessing as mp

    result = str(tmp_path / "said")
    mp.spawn(_sync_worker, args=(f"file://{tmp_path / 'rendezvous'}", str(base_dir), result), nprocs=2, join=True)
    said = [json.loads(Path(f"{result}.{r}").read_text(encoding="utf-8")) for r in (0, 1)]
    assert [s[0] for s in said] == ["in sync", "in sync"]
    assert all("rank(s) [1] differ from rank 0's" in s[1] and "stops before writing a checkpoint" in s[1] for s in said), said


def test_lorahive_run_nproc_refuses_a_config_ranks_cannot_run_before_starting_anything(base_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from lorahive.cli import run_cmd
    from lorahive.cli.main import app

    started: list[list[str]] = []
    monkeypatch.setattr(run_cmd.subprocess, "run", lambda cmd, **kw: started.append(cmd))
    (tmp_path / "config.yaml").write_text(dump_config(tiny_config(base_dir, ["mechanisms.topology.enabled=true"], ticks=1)), encoding="utf-8")

    result = CliRunner().invoke(app, ["run", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "out"), "--nproc", "2"])

    assert result.exit_code == 2
    assert "not supported with nproc > 1" in result.output and "enabled=false" in result.output
    assert not started and not (tmp_path / "out").exists()
