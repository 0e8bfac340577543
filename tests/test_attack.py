"""Malicious agents (mechanisms/attack.py) against validation, reputation and robust aggregation."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from lorahive.config import ConfigError
from lorahive.mechanisms.aggregation import Proposal, cosine, flatten, global_norm
from lorahive.mechanisms.attack import choose_attackers, poison
from lorahive.mechanisms.compose import build_aggregator
from lorahive.runtime import run as runs
from tiny_runs import tiny_config

NAMES = [f"agent{i:02d}" for i in range(20)]


@pytest.fixture(scope="module")
def honest(base_dir, tmp_path_factory):
    """One tick's honest proposals of 6 agents on the tiny model (nothing poisoned)."""
    out = tmp_path_factory.mktemp("honest")
    run = runs._build(out, tiny_config(base_dir, agents=6))
    ctx = run.swarm.tick()
    run.swarm.ledger.close()
    assert len(ctx.proposals) == 6
    return ctx.proposals


def test_attackers_are_chosen_from_the_seed_alone():
    first = choose_attackers(NAMES, 0.25, seed=3)

    assert first == choose_attackers(NAMES, 0.25, seed=3)
    assert sorted(first) == sorted(choose_attackers(list(reversed(NAMES)), 0.25, seed=3))  # not the agents' order
    assert len(first) == 5 and len(choose_attackers(NAMES, 0.1, 3)) == 2 and len(choose_attackers(NAMES, 0.4, 3)) == 8
    assert choose_attackers(NAMES, 0.25, seed=4) != first
    assert choose_attackers(NAMES, 0.0, seed=3) == []


def test_each_kind_poisons_as_documented(honest):
    g = honest[0].delta
    n = global_norm(g)

    flipped = poison(g, "sign_flip", 10.0, 0, 1, "a")
    noise = poison(g, "noise", 10.0, 0, 1, "a")
    door_a, door_b = poison(g, "backdoor", 10.0, 0, 1, "a"), poison(honest[1].delta, "backdoor", 10.0, 0, 2, "b")

    assert all(torch.equal(flipped[k], -10.0 * g[k]) for k in g)
    assert global_norm(noise) == pytest.approx(10 * n, rel=0.2) and abs(cosine(flatten(noise), flatten(g))) < 0.2
    assert cosine(flatten(door_a), flatten(door_b)) == pytest.approx(1.0, abs=1e-5)  # one fixed direction
    assert global_norm(door_a) == pytest.approx(10 * n, rel=1e-4)
    assert all(torch.isnan(t).all() for t in poison(g, "nan", 1.0, 0, 1, "a").values())
    assert all(torch.isinf(t).all() for t in poison(g, "inf", 1.0, 0, 1, "a").values())


def _attacked(honest, attackers, kind="sign_flip"):
    return [Proposal(p.agent, p.level, p.tick, poison(p.delta, kind, 10.0, 0, 1, p.agent), 1.0, p.reputation) if p.agent in attackers else p for p in honest]


def _deviation(agg_cfg, honest, attacked) -> float:
    clean = build_aggregator(agg_cfg).aggregate(1, honest).update
    bad = build_aggregator(agg_cfg).aggregate(1, attacked).update
    assert clean is not None and bad is not None
    return float((flatten(bad) - flatten(clean)).norm())


def test_clipping_bounds_how_far_attackers_move_the_update(honest):
    attackers = {honest[1].agent, honest[4].agent}
    attacked = _attacked(honest, attackers)
    c = sorted(global_norm(p.delta) for p in honest)[3]  # about the median honest norm
    bound = 2 * c * len(attackers) / len(honest)  # each of a agents moves a mean of n clipped vectors by ≤ 2c/n

    unclipped = _deviation({"strategy": "mean", "resonance": False}, honest, attacked)
    clipped = _deviation({"strategy": "mean", "resonance": False, "max_norm": c}, honest, attacked)

    assert clipped <= bound * (1 + 1e-5)
    assert unclipped > 3 * bound  # without clipping the same attack goes far past it


def test_robust_aggregation_discards_outliers_and_keeps_the_honest_median(honest):
    attackers = {honest[0].agent, honest[3].agent}
    robust = {"strategy": "median", "resonance": False, "reject_norm_ratio": 3.0}

    res = build_aggregator(robust).aggregate(1, _attacked(honest, attackers))
    update = res.update
    alone = build_aggregator({"strategy": "median", "resonance": False}).aggregate(1, [p for p in honest if p.agent not in attackers]).update

    assert update is not None and alone is not None
    assert all(torch.equal(update[k], alone[k]) for k in update)
    rejected = {d.agent: d.reason for d in res.decisions if not d.accepted}
    assert set(rejected) == attackers and all("reject_norm_ratio" in r for r in rejected.values())


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("nan", "non-finite"), ("inf", "non-finite"), ("sign_flip", "reject_norm_ratio"), ("backdoor", "reject_norm_ratio")],
)
def test_attackers_are_rejected_with_a_reason_and_lose_reputation(base_dir, tmp_path, kind, reason):
    cfg = tiny_config(base_dir, agents=4, ticks=2, attack={"fraction": 0.25, "kind": kind}, aggregation={"strategy": "median", "reject_norm_ratio": 3.0})
    attackers = choose_attackers(["agent0", "agent1", "agent2", "agent3"], 0.25, cfg.seed)

    metrics = runs.start(cfg, tmp_path / "run")

    db = sqlite3.connect(tmp_path / "run" / "ledger.sqlite")
    rows = db.execute("SELECT agent, decision, reason FROM proposals").fetchall()
    assert len(rows) == 8
    for agent, decision, why in rows:
        if agent in attackers:
            assert decision == "rejected" and reason in why, (agent, why)
        else:
            assert decision == "accepted", (agent, why)
    events = db.execute("SELECT json_extract(detail, '$.attackers'), json_extract(detail, '$.kind') FROM events WHERE kind = 'mechanism:attack'").fetchall()
    assert events == [(json.dumps(attackers, separators=(",", ":")), kind)] * 2
    rep = {n: a["reputation"] for n, a in metrics["agents"].items()}
    assert max(rep[a] for a in attackers) < min(r for n, r in rep.items() if n not in attackers)
    assert all(torch.isfinite(torch.tensor(a["quality_after"]["agnews"])) for a in metrics["agents"].values())


def test_attack_config_errors_name_the_field(base_dir):
    with pytest.raises(ConfigError, match="attack.kind"):
        tiny_config(base_dir, attack={"fraction": 0.2, "kind": "evil"})
    with pytest.raises(ConfigError, match="attack.fraction"):
        tiny_config(base_dir, attack={"fraction": 1.5})
    with pytest.raises(ConfigError, match="clip_by_reputation needs max_norm"):
        tiny_config(base_dir, aggregation={"clip_by_reputation": True})
