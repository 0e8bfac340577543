"""Stream runs on a tiny model: the accuracy matrix, the baselines, exact resume, influence."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest
import torch
from safetensors.torch import load_file

from lorahive.config import ConfigError, parse_config
from lorahive.observe.metrics import cl_metrics
from lorahive.runtime import run as runs
from lorahive.runtime.rundir import prepare_dir
from lorahive.runtime.stream import method_stack
from lorahive.suites.demo import load_demo
from tiny_runs import checkpoint_tensors

LEVELS = [
    {"name": "swarm", "rank": 2, "alpha": 4, "scope": "shared", "inertia": 0.5, "lr": 1e-2},
    {"name": "agent", "rank": 2, "alpha": 4, "scope": "agent", "inertia": 0.5, "lr": 2e-2},
    {"name": "context", "rank": 2, "alpha": 4, "scope": "task", "inertia": 0.1, "lr": 2e-2},
]
ORDER = ["yelp", "agnews"]


def config(base_dir, method="hive", **over):
    tree = {
        "base": str(base_dir),
        "levels": LEVELS,
        "agents": 2,
        "threads": 1,
        "suite": {"support": 4, "query": 2, "eval_query": 3, "max_prompt_tokens": 300},
        "agent": {"fast_steps": 1, "quality_bar": 0.0},
        "aggregation": {"strategy": "mean"},
        "stream": {"order": ORDER, "ticks_per_stage": 2, "method": method, "replay_fraction": 0.5},
        "observe": {"influence_examples": 2, "retention_tokens": 64, "retention_window": 32},
    }
    return parse_config(tree, [f"{k}={v}" for k, v in over.items()])


def _db(out):
    return sqlite3.connect(out / "ledger.sqlite")


def _tick_types(out):
    """{agent: [task type of its task at tick 1, 2, ...]} from the ledger's per-tick scores."""
    rows = _db(out).execute("SELECT agent, task_type FROM scores WHERE phase = 'after' AND n = 2 ORDER BY tick").fetchall()
    types: dict[str, list[str]] = {}
    for agent, t in rows:
        types.setdefault(agent, []).append(t)
    return types


@pytest.fixture(scope="module")
def hive_run(base_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hive")
    return out, runs.start(config(base_dir), out, force=True)


def test_a_stream_fills_one_row_of_r_per_stage(hive_run):
    out, metrics = hive_run

    r = metrics["cl"]["R"]
    assert metrics["cl"]["tasks"] == ORDER and len(r) == len(ORDER) + 1
    assert all(len(row) == len(ORDER) and all(v is not None and 0 <= v <= 1 for v in row) for row in r)
    m = cl_metrics(r)
    assert metrics["cl"]["ACC"] == pytest.approx(m.acc) and metrics["cl"]["BWT"] == pytest.approx(m.bwt)
    assert metrics["cl"]["FWT"] == pytest.approx(m.fwt)
    stages = _db(out).execute("SELECT tick, detail FROM events WHERE kind = 'stage' ORDER BY tick").fetchall()
    assert [(t, json.loads(d)["stage"]) for t, d in stages] == [(0, 0), (2, 1), (4, 2)]
    assert [json.loads(d)["R"] for _, d in stages] == r


def test_a_stream_works_on_one_task_type_per_stage(hive_run):
    out, _ = hive_run

    assert _tick_types(out) == {a: ["yelp", "yelp", "agnews", "agnews"] for a in ("agent0", "agent1")}


def test_metrics_hold_retention_and_influence(hive_run):
    _, metrics = hive_run

    ret = metrics["retention"]
    assert ret["ppl_before"] > 1 and ret["ppl_after"] > 1 and ret["ppl_before"] != ret["ppl_after"]
    levels = metrics["influence"]["levels"]
    assert set(levels) == set(ORDER)
    for shares in levels.values():
        assert set(shares) == {"swarm", "agent", "context"}
        assert sum(abs(v) for v in shares.values()) == pytest.approx(1.0)
    agents = metrics["influence"]["agents"]
    assert set(agents) == {"agent0", "agent1"} and sum(agents.values()) == pytest.approx(1.0)


def test_swarm_attribution_credits_exactly_the_change_of_the_swarm_level(base_dir, tmp_path):
    # screening's decay also moves the swarm level each tick; what is credited is the applied update
    run = runs._build(tmp_path, config(base_dir, **{"mechanisms.screening.enabled": "false"}))
    before = run.swarm._swarm_weights()

    ctx = run.swarm.tick()

    moved = float(torch.linalg.vector_norm(run.swarm._swarm_weights() - before))
    mass = run.swarm.attribution.mass
    assert ctx.update is not None and moved > 0
    assert set(mass) == {"agent0", "agent1"}
    assert sum(mass.values()) == pytest.approx(moved, rel=1e-5)
    run.swarm.ledger.close()


def _levels_in_checkpoint(out):
    return sorted(p.stem for p in (out / "checkpoint" / "levels").glob("*.safetensors"))


def test_seq_lora_trains_only_its_one_level_on_the_stream_in_order(base_dir, tmp_path):
    metrics = runs.start(config(base_dir, "seq-lora"), tmp_path)

    assert metrics["method"] == "seq-lora"
    assert _levels_in_checkpoint(tmp_path) == ["swarm"]
    b = [v for k, v in load_file(str(tmp_path / "checkpoint" / "levels" / "swarm.safetensors")).items() if k.endswith("/B")]
    assert any(bool(t.any()) for t in b)  # B starts at zero: it learned
    assert _db(tmp_path).execute("SELECT COUNT(*) FROM proposals").fetchone()[0] == 0
    assert _tick_types(tmp_path)["agent0"] == ["yelp", "yelp", "agnews", "agnews"]
    assert metrics["influence"]["levels"]["yelp"] == {"swarm": pytest.approx(1.0)}
    assert metrics["influence"]["agents"] == {}


def test_multitask_sees_every_task_type_in_every_stage(base_dir, tmp_path):
    runs.start(config(base_dir, "multitask"), tmp_path)

    types = _tick_types(tmp_path)
    for agent in ("agent0", "agent1"):
        assert set(types[agent][:2]) == set(ORDER) and set(types[agent][2:]) == set(ORDER)
    assert _levels_in_checkpoint(tmp_path) == ["swarm"]


def test_replay_mixes_past_examples_into_later_stages(base_dir, tmp_path):
    cfg = config(base_dir, "replay")
    prepare_dir(tmp_path, force=False)
    run = runs._build(tmp_path, cfg)
    seen: list[tuple[int, set[str]]] = []
    learn = run.hive.learn

    def spy(examples, steps=1, levels=None):
        seen.append((run.swarm.tick_no + 1, {p for exs in examples.values() for p, _ in exs}))
        return learn(examples, steps=steps, levels=levels)

    run.hive.learn = spy  # type: ignore[method-assign]
    for _ in range(cfg.ticks):
        run.swarm.tick()

    yelp = {p for p, _ in load_demo("yelp").train}
    agnews = {p for p, _ in load_demo("agnews").train}
    for tick, prompts in seen:
        assert prompts <= yelp | agnews
        if tick <= 2:  # stage 1: nothing to replay yet
            assert prompts <= yelp
        else:  # stage 2: half of each agent's support comes from stage 1
            assert prompts & yelp and prompts & agnews
    assert run.swarm.method.state_dict()["buffer"]["seen"] == cfg.ticks * 2 * 4
    run.swarm.ledger.close()


class Crash(Exception):
    pass


def _crash_after(tick):
    def progress(done, total, ctx):
        if ctx is not None and done == tick:
            raise Crash

    return progress


@pytest.mark.parametrize("method", ["hive", "replay"])
def test_a_stream_resumes_exactly_after_a_crash_mid_stage(base_dir, tmp_path, method):
    cfg = config(base_dir, method, **{"stream.ticks_per_stage": 3})
    straight = runs.start(cfg, tmp_path / "straight")
    with pytest.raises(Crash):
        runs.start(cfg, tmp_path / "split", progress=_crash_after(4))

    resumed = runs.resume(tmp_path / "split")

    a, b = checkpoint_tensors(tmp_path / "straight"), checkpoint_tensors(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        if not k.endswith("rng/torch"):
            assert torch.equal(a[k], b[k]), k
    sa = json.loads((tmp_path / "straight" / "checkpoint" / "state.json").read_text())
    sb = json.loads((tmp_path / "split" / "checkpoint" / "state.json").read_text())
    for key in ("tick", "agents_state", "cl_R", "attribution", "method", "ppl_before", "quality_before"):
        assert sa[key] == sb[key], key
    assert resumed["cl"] == straight["cl"]
    assert resumed["influence"] == straight["influence"]
    assert resumed["retention"] == straight["retention"]


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"stream.method": "ewc"}, "stream.method"),
        ({"stream.order": "[agnews, amazon]"}, "allowed: ['agnews', 'dbpedia', 'yahoo', 'yelp']"),
        ({"stream.order": "[agnews, agnews]"}, "repeated: agnews"),
        ({"stream.order": "[]"}, "stream.order"),
        ({"ticks": 7}, "ticks: a stream runs"),
        ({"stream.ticks_per_stage": 0}, "stream.ticks_per_stage"),
        ({"stream.replay_fraction": 1.5}, "stream.replay_fraction"),
    ],
)
def test_bad_stream_configs_fail_naming_the_field(base_dir, over, message):
    with pytest.raises(ConfigError) as err:
        config(base_dir, **over)
    assert message in str(err.value)


def test_method_error_lists_the_allowed_methods(base_dir):
    with pytest.raises(ConfigError, match="'hive', 'seq-lora', 'replay' or 'multitask'"):
        config(base_dir, **{"stream.method": "ewc"})


def test_a_stream_derives_its_ticks(base_dir):
    cfg = config(base_dir, **{"stream.ticks_per_stage": 3})
    assert cfg.ticks == 6 and not math.isnan(cfg.ticks)


@pytest.mark.parametrize("method", ["seq-lora", "replay", "multitask"])
def test_baselines_learn_with_the_agent_levels_step_unless_told(method):
    cfg = config("unused", method)
    agent_step = cfg.stack().get("agent").step_size
    (level,) = method_stack(cfg).levels
    assert level.name == "swarm" and level.rank == cfg.stack().get("swarm").rank
    assert level.step_size == pytest.approx(agent_step) and level.step_size != cfg.stack().get("swarm").step_size
    (level,) = method_stack(config("unused", method, **{"stream.baseline_step": 3e-4})).levels
    assert level.step_size == pytest.approx(3e-4)
    assert method_stack(config("unused", "hive")) == cfg.stack()
