"""Where an agent's swarm proposal is taken: before its fast steps (the default) or after them."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model, randomize_b, small_stack
from lorahive import Hive
from lorahive.adapters.fused import use_fused
from lorahive.config import AgentConfig
from lorahive.runtime.agent import as_answer, solve_all
from lorahive.suites.task import Task

LABELS = ("yes", "no")


def _tasks(agents: list[str]) -> dict[str, Task]:
    support = [("is the sky blue?", "yes"), ("is fire cold?", "no"), ("is ice cold?", "yes"), ("is grass red?", "no")]
    return {a: Task("quiz", support, support[:2], labels=LABELS) for a in agents}


def _same_proposals(out, expected) -> None:
    """Every agent's proposal in ``out`` (solve_all's outcomes) equals its ``expected`` gradients."""
    for a, want in expected.items():
        got = out[a].proposal
        assert got is not None and got.keys() == want.keys()
        for k in got:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)


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
    _same_proposals(out, expected)
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


def _twin_hives(tokenizer, zero_swarm: bool) -> tuple[Hive, Hive]:
    """Two identical hives with random B (the swarm level's left at zero when ``zero_swarm``)."""
    out = []
    for _ in range(2):
        h = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
        h.add_agents(["ann", "bob", "cyd"])
        randomize_b(h)
        if zero_swarm:
            with torch.no_grad():
                for bank in h.core.banks("swarm"):
                    bank.B.zero_()
            h.core.rescan()
        out.append(h)
    return out[0], out[1]


EXAMPLES = {
    "ann": [("is the sky blue?", " yes"), ("is fire cold?", " no")],
    "bob": [("is ice cold?", " yes")],
    "cyd": [("is grass red?", " no"), ("is the sky blue?", " yes"), ("is fire cold?", " no")],
}


@pytest.mark.parametrize("fused", ["off", "on"])
@pytest.mark.parametrize("zero_swarm", [False, True])
@pytest.mark.parametrize("anchor", [0.0, 1.0])
def test_a_folded_proposal_equals_the_separate_one_and_the_step_is_unchanged(tokenizer, anchor, zero_swarm, fused):
    separate, folded = _twin_hives(tokenizer, zero_swarm)
    fast = ["agent", "context"]
    with use_fused(fused):
        expected, _ = separate.propose(EXAMPLES, "swarm", anchor=anchor, anchor_positions=4)
        losses = separate.learn_async(EXAMPLES, levels=fast, anchor=anchor, anchor_positions=4)
        got_losses, got = folded.learn_and_propose(EXAMPLES, "swarm", levels=fast, anchor=anchor, anchor_positions=4)
    assert got.keys() == expected.keys()
    for a in expected:
        assert got[a].keys() == expected[a].keys()
        for k in expected[a]:
            torch.testing.assert_close(got[a][k], expected[a][k], rtol=1e-5, atol=1e-7)
    for a in losses:
        torch.testing.assert_close(got_losses[a], losses[a])
    for lv in separate.levels:  # the step moved the same levels the same way, and left the swarm level alone
        want, have = separate.core.level_params(lv.name), folded.core.level_params(lv.name)
        for k in want:
            torch.testing.assert_close(have[k].detach(), want[k].detach(), rtol=1e-5, atol=1e-7)
    assert folded.core.written["swarm"] == separate.core.written["swarm"]


def test_a_folded_step_measures_the_activity_the_plain_step_does(tokenizer):
    plain, folded = _twin_hives(tokenizer, zero_swarm=False)
    for h in (plain, folded):
        h.watch_activity(["swarm", "agent"])
    plain.learn_async(EXAMPLES, levels=["agent", "context"])
    folded.learn_and_propose(EXAMPLES, "swarm", levels=["agent", "context"])
    want, have = plain.watched_activity(), folded.watched_activity()
    assert want is not None and have is not None and have.keys() == want.keys() == {"swarm", "agent"}
    for lv in want:
        torch.testing.assert_close(have[lv][0], want[lv][0], rtol=1e-5, atol=1e-7)
        assert torch.equal(have[lv][1], want[lv][1])


def test_a_proposal_is_not_folded_into_a_step_that_trains_its_level(hive):
    with pytest.raises(ValueError, match="among the levels the step trains"):
        hive.learn_and_propose(EXAMPLES, "swarm", levels=["swarm", "agent"])


@pytest.mark.parametrize("anchor", [0.0, 1.0])
def test_shared_proposals_are_the_gradients_of_the_shared_levels_alone(hive, anchor):
    randomize_b(hive)  # the agent levels hold something, so the full view and the shared view differ
    agents = ["ann", "bob"]
    tasks = _tasks(agents)
    cfg = AgentConfig(fast_steps=2, quality_bar=0.0, anchor=anchor, propose_at="shared")
    hive.reset_slots("context", agents)
    shared = [lv.name for lv in hive.levels if lv.scope == "shared"]
    expected, _ = hive.propose(_support(tasks), "swarm", anchor=anchor, anchor_positions=cfg.anchor_positions, levels=shared)
    full, _ = hive.propose(_support(tasks), "swarm", anchor=anchor, anchor_positions=cfg.anchor_positions)
    assert max(float((full["ann"][k] - expected["ann"][k]).abs().max()) for k in full["ann"]) > 1e-6
    out = solve_all(hive, tasks, cfg, "swarm")
    _same_proposals(out, expected)


def test_a_view_without_the_proposed_level_is_refused(hive):
    with pytest.raises(ValueError, match="among the levels of the view"):
        hive.propose(EXAMPLES, "swarm", levels=["agent"])
