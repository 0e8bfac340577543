"""Run measurements: which agent views are identical, retention perplexity per view."""

from __future__ import annotations

from lorahive.config import ObserveConfig
from lorahive.runtime.measure import distinct_views, retention_ppl, view_groups


def test_fresh_agents_share_one_view_whatever_their_random_a(hive):
    assert view_groups(hive, hive.agents) == {"ann": "ann", "bob": "ann", "cyd": "ann"}


def test_an_agent_that_learned_has_its_own_view(hive):
    hive.learn({"bob": [("The capital of France is", " Paris")]}, levels=["agent"])

    assert view_groups(hive, hive.agents) == {"ann": "ann", "bob": "bob", "cyd": "ann"}
    assert distinct_views(hive, hive.agents) == ["ann", "bob"]


def test_retention_is_measured_per_view_and_given_to_every_agent(hive):
    hive.learn({"bob": [("The capital of France is", " Paris")]}, steps=3, levels=["agent"])
    cfg = ObserveConfig(retention_tokens=48, retention_window=16)

    ppl = retention_ppl(hive, hive.agents, cfg, "The capital of France is Paris. The team won the match. " * 4)

    assert set(ppl) == {"ann", "bob", "cyd"}
    assert ppl["ann"] == ppl["cyd"] != ppl["bob"]
