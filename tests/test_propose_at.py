"""Where an agent's swarm proposal is taken: before its fast steps (the default) or after them."""

from __future__ import annotations

import pytest
import torch

from conftest import randomize_b
from lorahive.config import AgentConfig
from lorahive.runtime.agent import as_answer, solve_all
from lorahive.suites.task import Task

LABELS = ("yes", "no")


def _tasks(agents: list[str]) -> dict[str, Task]:
    support = [("is the sky blue?", "yes"), ("is fire cold?", "no"), ("is ice cold?", "yes"), ("is grass red?", "no")]
    return {a: Task("quiz", support, support[:2], labels=LABELS) for a in agents}


def _support(tasks: dict[str, Task]) -> dict[str, list[tuple[str, str]]]:
    return {a: [(p, as_answer(ans)) for p, ans in t.support] for a, t in tasks.items()}


@pytest.mark.parametrize("anchor", [0.0, 1.0])
def test_start_proposals_are_the_gradients_of_the_view_the_tick_began_with(hive, anchor):
    randomize_b(hive)
    agents = ["ann", "bob"]
    tasks = _tasks(agents)
    cfg = AgentConfig(fast_steps=2, quality_bar=0.0, anchor=anchor, propose_at="start")
    hive.reset_slots("context", agents)
    expected, _ = hive.propose(_support(tasks), "swarm", anchor=anchor, anchor_positions=cfg.anchor_positions)
    out = solve_all(hive, tasks, cfg, "swarm")
    for a in agents:
        got = out[a].proposal
        assert got is not None and got.keys() == expected[a].keys()
        for k in got:
            torch.testing.assert_close(got[k], expected[a][k], rtol=1e-5, atol=1e-7)
    # the fast steps moved the agent's levels, so a proposal taken now differs from the one taken at the start
    after, _ = hive.propose(_support(tasks), "swarm", anchor=anchor, anchor_positions=cfg.anchor_positions)
    gap = max(float((after["ann"][k] - expected["ann"][k]).abs().max()) for k in after["ann"])
    assert gap > 1e-6


def test_start_proposals_still_pass_the_quality_bar(hive):
    agents = ["ann", "bob"]
    out = solve_all(hive, _tasks(agents), AgentConfig(fast_steps=1, quality_bar=1.0, propose_at="start"), "swarm")
    for a in agents:
        assert (out[a].proposal is None) == (out[a].quality < 1.0)


def test_propose_at_is_validated():
    with pytest.raises(ValueError, match="propose_at"):
        AgentConfig.model_validate({"propose_at": "later"})
