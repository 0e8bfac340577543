"""Shared levels merged into the base weights for inference (adapters/merge.py): the same outputs as running
every term live, in the fused and the reference path, for any mix of agents and any level subset; the merged
weight follows every change of the levels; learning never merges."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model, small_stack
from lorahive import Hive
from lorahive.adapters import HiveLinear
from lorahive.adapters.fused import use_fused

PROMPTS = ["Sports: the team won the match.", "World: the summit ended in", "Business: shares fell after"]
AGENTS = ["ann", "bob", "ann"]


def _hive(tokenizer) -> Hive:
    hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    hive.add_agents(["ann", "bob"])
    gen = torch.Generator().manual_seed(5)
    for level in ("domain", "swarm", "agent", "context"):
        for agent in ("ann", "bob"):
            slot = hive.core.slot_of(level, agent)
            delta = {p: (torch.randn(b.out_features, 1, generator=gen) * 0.2, torch.randn(1, b.in_features, generator=gen) * 0.2) for p, b in hive.core.named_banks(level)}
            hive.core.add_delta(level, slot, delta)
    return hive


def _merged_layers(hive: Hive) -> list[HiveLinear]:
    return [m for m in hive.model.modules() if isinstance(m, HiveLinear) and m.merged is not None]


@pytest.mark.parametrize("fused", ["on", "off"])
@pytest.mark.parametrize("levels", [None, ["foundation", "swarm", "agent"], ["domain", "swarm"]])
def test_merged_outputs_equal_the_live_terms(tokenizer, fused, levels):
    hive = _hive(tokenizer)
    with use_fused(fused):
        live = hive.logits(PROMPTS, AGENTS, levels=levels)
        with hive.core.routing.merging():
            merged = hive.logits(PROMPTS, AGENTS, levels=levels)
    torch.testing.assert_close(merged, live, rtol=1e-4, atol=1e-4)  # fp32: the same sum in another order
    assert _merged_layers(hive), "no module ran on a merged weight"
    assert not torch.equal(live, hive.logits(PROMPTS, AGENTS, levels=[]))  # the levels do change the output


def test_generation_and_scoring_match_and_the_merged_weight_follows_a_learning_step(tokenizer):
    hive = _hive(tokenizer)
    rows = [(a, p, " yes") for a, p in zip(AGENTS, PROMPTS, strict=True)]
    live_text = hive.generate(PROMPTS, AGENTS, max_new_tokens=4)
    live_nll = hive.row_nll(rows)
    with hive.core.routing.merging():
        assert hive.generate(PROMPTS, AGENTS, max_new_tokens=4) == live_text
        torch.testing.assert_close(hive.row_nll(rows), live_nll, rtol=1e-5, atol=1e-5)
        before = [m.merged[1].clone() for m in _merged_layers(hive) if m.merged is not None]
        hive.learn({"ann": [(PROMPTS[0], " yes")]}, levels=["swarm"])  # learning under merging: autograd runs every term live
        after = hive.row_nll(rows)  # the swarm moved: the merged weights must be rebuilt
        changed = [m.merged[1] for m in _merged_layers(hive) if m.merged is not None]
    torch.testing.assert_close(after, hive.row_nll(rows), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, live_nll)
    assert any(not torch.equal(x, y) for x, y in zip(before, changed, strict=True))


def test_learning_under_merging_is_the_same_as_without(tokenizer):
    a, b = _hive(tokenizer), _hive(tokenizer)
    examples = {"ann": [(PROMPTS[0], " yes")], "bob": [(PROMPTS[1], " no")]}
    with a.core.routing.merging():
        got = a.learn(examples, steps=2)
    want = b.learn(examples, steps=2)
    assert got == want
    for x, y in zip(a.core.level_params("swarm").values(), b.core.level_params("swarm").values(), strict=True):
        assert torch.equal(x, y)
    assert not _merged_layers(a)


def test_an_optimizer_step_bumps_the_version_of_what_it_wrote(tokenizer):
    """The merged weights (and any cache keyed on a tensor's version) see the fused AdamW's writes."""
    hive = _hive(tokenizer)
    swarm, agent = next(iter(hive.core.banks("swarm"))), next(iter(hive.core.banks("agent")))
    before = (swarm.A._version, swarm.B._version, agent.B._version)
    hive.learn({"ann": [(PROMPTS[0], " yes")]}, levels=["swarm"])
    assert swarm.A._version > before[0] and swarm.B._version > before[1] and agent.B._version == before[2]
