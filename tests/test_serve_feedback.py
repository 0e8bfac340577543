"""Feedback beyond corrections: rewards that teach, and serve ticks that feed the swarm level.

Rewards run over the in-process engine of test_serve.py (two agents, no run directory);
serve ticks over a one-tick run directory of the tiny random Llama, with a long request
decoding while the tick runs, so the decode stall it causes is measured (and printed).
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import threading

import torch

from lorahive.mechanisms.aggregation import flatten
from lorahive.runtime import run as runs
from lorahive.serve import Engine, Settings
from lorahive.serve.feedback import lesson
from lorahive.serve.load import engine_for_run
from test_serve import PROMPT, make_hive, serving, wait_for
from tiny_runs import tiny_config


def _level(engine: Engine, level: str) -> torch.Tensor:
    return flatten({k: p.detach().clone() for k, p in engine.hive.core.level_params(level).items()})


def _loss(engine: Engine, agent: str, prompt: str, answer: str) -> float:
    with engine.gate:
        return engine.hive.loss({agent: [(prompt, answer)]})[agent]


def test_the_reward_rule():
    assert lesson(" red", 0.0, " blue", 0.5).answer == " blue"  # a correction wins over any reward
    assert (lesson(" red", 0.5, None, 0.5).source, lesson(" red", 0.5, None, 0.5).answer) == ("reward", " red")  # at the bar: taught
    assert (lesson(" red", 0.49, None, 0.5).source, lesson(" red", 0.49, None, 0.5).learns) == ("negative", False)
    assert lesson("  ", 1.0, None, 0.5).source == "empty"


def test_a_high_reward_teaches_the_completion_to_that_agent_only(tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    engine = Engine(make_hive(), ledger, Settings(max_tokens=32, feedback_steps=5))
    with serving(engine) as client:
        r = client.completions.create(model="ann", prompt=PROMPT, max_tokens=6)
        answer = r.choices[0].text
        ann_before, bob_before = _loss(engine, "ann", PROMPT, answer), _loss(engine, "bob", PROMPT, answer)
        ack = client.post("/feedback", body={"completion_id": r.id, "reward": 1.0}, cast_to=object)
        assert isinstance(ack, dict) and (ack["learning"], ack["source"]) == ("queued", "reward")
        wait_for(lambda: engine.stats["learned"] == 1)
        assert _loss(engine, "ann", PROMPT, answer) < ann_before - 0.05  # its own answer became more likely
        assert _loss(engine, "bob", PROMPT, answer) == bob_before

        agent_level = _level(engine, "agent")
        low = client.post("/feedback", body={"completion_id": r.id, "reward": 0.0}, cast_to=object)
        assert isinstance(low, dict) and (low["learning"], low["source"]) == ("none", "negative")
        client.completions.create(model="ann", prompt=PROMPT, max_tokens=2)  # the worker has passed the feedback
        assert torch.equal(_level(engine, "agent"), agent_level)  # a low reward teaches nothing
    with sqlite3.connect(ledger) as db:
        fb = [json.loads(d) for (d,) in db.execute("SELECT detail FROM events WHERE kind = 'serve_feedback' ORDER BY id")]
        learned = [json.loads(d) for (d,) in db.execute("SELECT detail FROM events WHERE kind = 'serve_learn'")]
    assert [(f["source"], f["learning"], f["reward"]) for f in fb] == [("reward", True, 1.0), ("negative", False, 0.0)]
    assert [(x["feedback_id"], x["source"]) for x in learned] == [(ack["id"], "reward")]


def test_a_serve_tick_turns_feedback_into_a_swarm_update_between_decode_steps(tmp_path, base_dir):
    out = tmp_path / "run"
    runs.start(tiny_config(base_dir, ["ticks=1"]), out)
    engine = engine_for_run(out, Settings(max_tokens=160, tick_every=2, checkpoint_every=1000))
    swarm_before, tick = _level(engine, "swarm"), engine.tick
    with serving(engine) as client:
        done = [client.completions.create(model=a, prompt=PROMPT, max_tokens=3) for a in ("agent1", "agent2")]
        steps = engine.stats["steps"]
        long = threading.Thread(target=client.completions.create, kwargs={"model": "agent0", "prompt": PROMPT, "max_tokens": 150})
        long.start()
        wait_for(lambda: engine.stats["steps"] >= steps + 3)
        marks = len(engine.timeline)
        for r, fix in zip(done, (" blue", " Paris"), strict=True):
            client.post("/feedback", body={"completion_id": r.id, "correction": fix}, cast_to=object)
        wait_for(lambda: engine.stats["serve_ticks"] == 1)
        long.join(60)
        timeline = list(engine.timeline)[marks:]
    kinds = [k for k, _ in timeline]
    first, last = kinds.index("tick"), len(kinds) - 1 - kinds[::-1].index("tick")
    assert kinds[first : last + 1].count("tick") == 3  # two proposals (one per agent), then aggregation
    assert "tick tick" not in " ".join(kinds[first : last + 1])  # a decode step between every two units
    units = [s for k, s in timeline if k == "tick"]
    step = statistics.median(s for k, s in timeline if k == "step")
    print(f"\nserve tick: units {[round(u * 1000, 2) for u in units]} ms; largest decode stall {max(units) * 1000:.2f} ms; median decode step {step * 1000:.2f} ms")

    assert not torch.equal(_level(engine, "swarm"), swarm_before)  # the swarm level moved
    with sqlite3.connect(out / "ledger.sqlite") as db:
        (detail,) = [json.loads(d) for (d,) in db.execute("SELECT detail FROM events WHERE kind = 'serve_tick'")]
        proposals = db.execute("SELECT agent, decision FROM proposals WHERE id BETWEEN ? AND ?", detail["rows"]["proposals"]).fetchall()
        updates = db.execute("SELECT tick, level, n_proposals FROM updates WHERE id BETWEEN ? AND ?", detail["rows"]["updates"]).fetchall()
        learned = db.execute("SELECT COUNT(*) FROM events WHERE kind = 'serve_learn'").fetchone()[0]
    assert detail["agents"] == {"agent1": 1, "agent2": 1} and detail["applied"] and len(detail["feedback"]) == 2
    assert sorted(proposals) == [("agent1", "accepted"), ("agent2", "accepted")]
    assert updates == [(tick, "swarm", 2)] and learned == 2
    assert detail["max_stall_s"] == round(max(detail["units"]), 5) and len(detail["units"]) == 3
