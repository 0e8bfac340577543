"""Per-agent proposals on a shared level are each agent's own gradient (issue 3, item 3)."""

from __future__ import annotations

import torch

from conftest import randomize_b
from lorahive.learning.batching import pack_examples
from lorahive.learning.objective import answer_nll

EXAMPLES = {
    "ann": [("The capital of France is", " Paris"), ("great", " positive")],
    "bob": [("Question: what colour is the sky? Answer:", " blue")],
    "cyd": [("Sports: the team", " won"), ("terrible", " negative"), ("fine", " neutral")],
}


def _alone_grad(hive, agent, level="swarm"):
    batch = pack_examples(hive.tokenizer, EXAMPLES[agent], hive.core.max_length)
    params = hive.core.level_params(level)
    for p in params.values():
        p.requires_grad_(True)
    with hive.core.routing.use(hive.core.route([agent] * len(EXAMPLES[agent]))):
        total, count = answer_nll(hive.model, batch)
    loss = total.sum() / count.sum()
    grads = torch.autograd.grad(loss, list(params.values()))
    return {k: g[0] for k, g in zip(params, grads, strict=True)}


def test_each_proposal_equals_that_agents_gradient_alone(hive):
    randomize_b(hive)
    proposals, losses = hive.propose(EXAMPLES, "swarm")

    assert set(proposals) == set(EXAMPLES)
    for agent in EXAMPLES:
        alone = _alone_grad(hive, agent)
        assert proposals[agent].keys() == alone.keys()
        for k in alone:
            torch.testing.assert_close(proposals[agent][k], alone[k], rtol=1e-4, atol=1e-6)
    assert all(v > 0 for v in losses.values())


def test_proposals_differ_between_agents(hive):
    randomize_b(hive)
    proposals, _ = hive.propose(EXAMPLES, "swarm")
    key = next(iter(proposals["ann"]))
    assert not torch.allclose(proposals["ann"][key], proposals["bob"][key])


def test_proposing_changes_no_weight(hive):
    before = {k: p.detach().clone() for k, p in hive.core.level_params("swarm").items()}
    hive.propose(EXAMPLES, "swarm")
    assert all(torch.equal(before[k], p.detach()) for k, p in hive.core.level_params("swarm").items())


def test_applying_the_mean_proposal_lowers_the_mean_loss(hive):
    randomize_b(hive)
    proposals, before = hive.propose(EXAMPLES, "swarm")
    mean = {k: torch.stack([proposals[a][k] for a in proposals]).mean(0) for k in proposals["ann"]}
    for _ in range(5):
        hive.apply_update("swarm", mean)
    after = hive.loss(EXAMPLES)
    assert sum(after.values()) < sum(before.values())


def test_fused_proposals_equal_the_reference_path(hive):
    from lorahive.adapters.fused import use_fused

    randomize_b(hive)
    with use_fused("off"):
        reference, ref_losses = hive.propose(EXAMPLES, "swarm")
    with use_fused("on"):
        fused, losses = hive.propose(EXAMPLES, "swarm")
    for agent in EXAMPLES:
        assert abs(losses[agent] - ref_losses[agent]) < 1e-5
        for k in reference[agent]:
            torch.testing.assert_close(fused[agent][k], reference[agent][k], rtol=1e-4, atol=1e-6)
