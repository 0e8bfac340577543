"""Level Shapley values and drop-one KL, and per-agent attribution of the swarm level."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize_b
from lorahive.learning.batching import IGNORE, pack_examples
from lorahive.learning.objective import answer_nll, hidden_states
from lorahive.observe.influence import (
    SwarmAttribution,
    level_influence,
    projection_contributions,
    shapley_matrix,
)

EXAMPLES = [
    ("The capital of France is", " Paris"),
    ("Question: what colour is the sky? Answer:", " blue"),
    ("Sports: the team", " won the match"),
]
AGENTS = ["ann", "bob", "cyd"]


def _only_level_nonzero(hive, level: str) -> None:
    randomize_b(hive, scale=0.3)
    with torch.no_grad():
        for lv in hive.levels:
            if lv.name != level:
                for bank in hive.core.banks(lv.name):
                    bank.B.zero_()


def _slow_value(hive, example, agent, coalition) -> float:
    batch = pack_examples(hive.tokenizer, [example], hive.core.max_length)
    with torch.no_grad(), hive.core.routing.use(hive.core.route([agent], levels=coalition)):
        total, _ = answer_nll(hive.model, batch)
    return -float(total[0])


def _slow_shapley(hive, example, agent, levels, kept) -> list[float]:
    """Shapley by its definition: mean marginal contribution over all n! orderings."""
    n = len(levels)
    cache = {s: _slow_value(hive, example, agent, kept + list(s)) for k in range(n + 1) for s in itertools.combinations(levels, k)}
    phi = [0.0] * n
    for order in itertools.permutations(range(n)):
        have: list[str] = []
        for i in order:
            before = cache[tuple(lv for lv in levels if lv in have)]
            have.append(levels[i])
            phi[i] += cache[tuple(lv for lv in levels if lv in have)] - before
    return [p / math.factorial(n) for p in phi]


def _answer_logp(hive, example, agent, coalition) -> torch.Tensor:
    batch = pack_examples(hive.tokenizer, [example], hive.core.max_length)
    with torch.no_grad(), hive.core.routing.use(hive.core.route([agent], levels=coalition)):
        h = hidden_states(hive.model, batch)
    keep = batch.labels[:, 1:] != IGNORE
    return F.log_softmax(hive.model.get_output_embeddings()(h[:, :-1][keep]).float(), -1)


def test_only_nonzero_level_gets_all_the_shapley_value(hive):
    _only_level_nonzero(hive, "swarm")

    inf = level_influence(hive.core, EXAMPLES[:2], AGENTS[:2])

    assert abs(inf.full - inf.base) > 1e-2
    assert inf.shapley["swarm"] == pytest.approx(inf.full - inf.base, abs=1e-9)
    for lv in ("foundation", "domain", "agent", "context"):
        assert inf.shapley[lv] == pytest.approx(0.0, abs=1e-9)
        assert inf.kl[lv] == pytest.approx(0.0, abs=1e-9)
    assert inf.kl["swarm"] > 1e-4
    assert abs(inf.shares()["swarm"]) == pytest.approx(1.0)


def test_shapley_values_add_up_to_full_minus_base(hive):
    randomize_b(hive, scale=0.3)

    inf = level_influence(hive.core, EXAMPLES[:2], AGENTS[:2], max_rows=7)

    assert sum(inf.shapley.values()) == pytest.approx(inf.full - inf.base, abs=1e-6)
    assert inf.per_example.shape == (2, 5)
    assert len({round(v, 3) for v in inf.shapley.values()}) > 1


def test_batched_result_equals_slow_loop_over_ablated_subsets(hive):
    randomize_b(hive, scale=0.3)
    levels = ["swarm", "agent", "context"]

    inf = level_influence(hive.core, EXAMPLES, AGENTS, levels=levels, max_rows=10)

    kept = ["foundation", "domain"]  # outside the game: always on
    slow = [_slow_shapley(hive, ex, a, levels, kept) for ex, a in zip(EXAMPLES, AGENTS, strict=True)]
    torch.testing.assert_close(inf.per_example, torch.tensor(slow, dtype=torch.float64), rtol=1e-4, atol=1e-4)
    full = [_slow_value(hive, ex, a, kept + levels) for ex, a in zip(EXAMPLES, AGENTS, strict=True)]
    base = [_slow_value(hive, ex, a, kept) for ex, a in zip(EXAMPLES, AGENTS, strict=True)]
    assert inf.full == pytest.approx(sum(full) / 3, abs=1e-4)
    assert inf.base == pytest.approx(sum(base) / 3, abs=1e-4)


def test_drop_one_kl_equals_slow_loop(hive):
    randomize_b(hive, scale=0.3)
    levels = [lv.name for lv in hive.levels]

    inf = level_influence(hive.core, EXAMPLES, AGENTS, max_rows=5)

    for lv in levels:
        total, count = 0.0, 0
        for ex, a in zip(EXAMPLES, AGENTS, strict=True):
            p = _answer_logp(hive, ex, a, levels)
            q = _answer_logp(hive, ex, a, [x for x in levels if x != lv])
            total += float((p.exp() * (p - q)).sum())
            count += p.shape[0]
        assert inf.kl[lv] == pytest.approx(total / count, rel=1e-4, abs=1e-7)


def test_shapley_matrix_matches_definition_for_two_players():
    v = torch.tensor([[0.0, 1.0, 2.0, 5.0]], dtype=torch.float64)  # v(∅), v({0}), v({1}), v({0,1})

    phi = v @ shapley_matrix(2)

    # φ_0 = ½(v0 − v∅) + ½(v01 − v1) = ½·1 + ½·3 = 2; φ_1 = ½·2 + ½·4 = 3
    torch.testing.assert_close(phi, torch.tensor([[2.0, 3.0]], dtype=torch.float64))


def test_influence_refuses_mismatched_agents_and_unknown_levels(hive):
    with pytest.raises(ValueError, match="one agent per example"):
        level_influence(hive.core, EXAMPLES, AGENTS[:2])
    with pytest.raises(ValueError, match="unknown levels"):
        level_influence(hive.core, EXAMPLES, AGENTS, levels=["nope"])


# ---------------------------------------------------------------------- SwarmAttribution
def test_attribution_shares_sum_to_one_and_follow_decay():
    att = SwarmAttribution()

    att.tick({"ann": 2.0, "bob": 1.0})
    att.tick({"cyd": 1.0}, decay=0.5)  # ann 1.0, bob 0.5, cyd 1.0

    shares = att.shares()
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares == pytest.approx({"ann": 1.0 / 2.5, "bob": 0.5 / 2.5, "cyd": 1.0 / 2.5})


def test_attribution_old_contributions_fade_under_repeated_decay():
    att = SwarmAttribution()
    att.tick({"ann": 1.0})

    for _ in range(20):
        att.tick({"bob": 0.1}, decay=0.8)

    assert att.shares()["bob"] > 0.95
    assert att.mass["ann"] == pytest.approx(0.8**20)


def test_attribution_state_round_trips_and_rejects_bad_input():
    att = SwarmAttribution()
    att.tick({"ann": 1.0, "bob": 3.0})
    copy = SwarmAttribution()

    copy.load_state_dict(att.state_dict())

    assert copy.shares() == att.shares()
    assert SwarmAttribution().shares() == {}
    with pytest.raises(ValueError, match="decay"):
        att.tick({}, decay=1.5)
    with pytest.raises(ValueError, match="not finite"):
        att.tick({"ann": float("nan")})


def test_projection_contributions_sum_to_the_update_norm():
    gen = torch.Generator().manual_seed(0)
    u = {"ann": torch.randn(3, 4, generator=gen), "bob": torch.randn(3, 4, generator=gen)}
    w = {"ann": 0.7, "bob": 0.3}

    c = projection_contributions(u, w)

    total = (u["ann"] * 0.7 + u["bob"] * 0.3).norm()
    assert sum(c.values()) == pytest.approx(float(total), rel=1e-6)
    opposed = projection_contributions({"a": torch.ones(4), "b": -0.5 * torch.ones(4)})
    assert opposed["b"] < 0 < opposed["a"]
