"""Learning in passes (``rows_per_pass``): whole agents per pass, gradients added up, the same step as one pass."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model, randomize_b, small_stack
from lorahive.runtime.hive import Hive
from lorahive.runtime.passes import split

EXAMPLES = {
    "ann": [("is the sky blue?", " yes"), ("is fire cold?", " no")],
    "bob": [("is ice cold?", " yes")],
    "cyd": [("is grass red?", " no"), ("is the sky blue?", " yes"), ("is fire cold?", " no")],
    "dee": [("is snow white?", " yes")],
}
FAST = ["agent", "context"]


def _twins(tokenizer) -> tuple[Hive, Hive]:
    out = []
    for _ in range(2):
        h = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
        h.add_agents(list(EXAMPLES))
        randomize_b(h)
        out.append(h)
    return out[0], out[1]


def _same_levels(a: Hive, b: Hive) -> None:
    for lv in a.levels:
        want, have = a.core.level_params(lv.name), b.core.level_params(lv.name)
        for k in want:
            torch.testing.assert_close(have[k].detach(), want[k].detach(), rtol=1e-5, atol=1e-5, msg=f"{lv.name} {k}")  # passes add gradients in another order: rounding, 1e-7 after a step, 2e-6 after Adam's second (steps are ~1e-3)


def test_whole_agents_are_grouped_in_order_and_a_large_agent_is_a_pass_alone():
    assert [list(g) for g in split(EXAMPLES, 3)] == [["ann", "bob"], ["cyd"], ["dee"]]
    assert [list(g) for g in split(EXAMPLES, 2)] == [["ann"], ["bob"], ["cyd"], ["dee"]]  # cyd's 3 rows: alone
    assert [list(g) for g in split(EXAMPLES, None)] == [list(EXAMPLES)]
    assert [list(g) for g in split(EXAMPLES, 100)] == [list(EXAMPLES)]


@pytest.mark.parametrize("anchor", [0.0, 1.0])
@pytest.mark.parametrize("rows", [1, 3])
def test_steps_in_passes_equal_one_pass(tokenizer, anchor, rows):
    one, parts = _twins(tokenizer)
    for _ in range(2):  # the second step starts from moved weights and Adam moments
        want = one.learn_async(EXAMPLES, levels=None, anchor=anchor, anchor_positions=4)
        got = parts.learn_async(EXAMPLES, levels=None, anchor=anchor, anchor_positions=4, rows_per_pass=rows)
        assert list(got) == list(want)
        for a in want:
            torch.testing.assert_close(got[a], want[a], rtol=1e-5, atol=1e-7)
    _same_levels(one, parts)  # the shared levels (mean over every agent) too


@pytest.mark.parametrize("anchor", [0.0, 1.0])
def test_proposals_in_passes_equal_one_pass(tokenizer, anchor):
    one, parts = _twins(tokenizer)
    want, want_loss = one.propose(EXAMPLES, "swarm", anchor=anchor, anchor_positions=4)
    got, got_loss = parts.propose(EXAMPLES, "swarm", anchor=anchor, anchor_positions=4, rows_per_pass=2)
    assert got.keys() == want.keys() and got_loss.keys() == want_loss.keys()
    for a in want:
        assert got_loss[a] == pytest.approx(want_loss[a], rel=1e-5)
        for k in want[a]:
            torch.testing.assert_close(got[a][k], want[a][k], rtol=1e-5, atol=1e-6, msg=f"{a} {k}")  # batches of other widths round differently (3.5e-7 seen on gradients of 0.14)


def test_a_folded_proposal_in_passes_equals_one_pass(tokenizer):
    one, parts = _twins(tokenizer)
    want_loss, want = one.learn_and_propose(EXAMPLES, "swarm", levels=FAST, anchor=1.0, anchor_positions=4)
    got_loss, got = parts.learn_and_propose(EXAMPLES, "swarm", levels=FAST, anchor=1.0, anchor_positions=4, rows_per_pass=2)
    for a in want:
        torch.testing.assert_close(got_loss[a], want_loss[a], rtol=1e-5, atol=1e-7)
        for k in want[a]:
            torch.testing.assert_close(got[a][k], want[a][k], rtol=1e-5, atol=1e-6, msg=f"{a} {k}")  # batches of other widths round differently (3.5e-7 seen on gradients of 0.14)
    _same_levels(one, parts)


def test_losses_and_activity_in_passes_equal_one_pass(tokenizer):
    one, parts = _twins(tokenizer)
    assert parts.loss(EXAMPLES, rows_per_pass=1) == pytest.approx(one.loss(EXAMPLES), rel=1e-5)
    want, got = one.activity_totals(EXAMPLES, ["swarm", "agent"]), parts.activity_totals(EXAMPLES, ["swarm", "agent"], rows_per_pass=2)
    assert got.keys() == want.keys() == {"swarm", "agent"}
    for lv in want:
        torch.testing.assert_close(got[lv][0], want[lv][0], rtol=1e-5, atol=1e-7)
        assert torch.equal(got[lv][1], want[lv][1])


def test_an_armed_measurement_adds_up_every_pass(tokenizer):
    one, parts = _twins(tokenizer)
    for h in (one, parts):
        h.watch_activity(["swarm", "agent"], inputs=2)
    one.learn_async(EXAMPLES, levels=FAST)
    parts.learn_async(EXAMPLES, levels=FAST, rows_per_pass=2)
    want, got = one.watched_activity(), parts.watched_activity()
    assert want is not None and got is not None and got.keys() == want.keys()
    for lv in want:
        torch.testing.assert_close(got[lv][0], want[lv][0], rtol=1e-5, atol=1e-7)
        assert torch.equal(got[lv][1], want[lv][1])
    assert parts.watched_inputs().keys() == one.watched_inputs().keys()


def test_a_pass_size_below_one_row_is_refused_before_anything_moves(tokenizer):
    one, _ = _twins(tokenizer)
    before = {k: v.detach().clone() for k, v in one.core.level_params("agent").items()}
    with pytest.raises(ValueError, match="rows_per_pass must be ≥ 1"):
        one.learn_async(EXAMPLES, rows_per_pass=0)
    for k, v in one.core.level_params("agent").items():
        assert torch.equal(v.detach(), before[k])


def test_a_run_in_passes_takes_the_decisions_of_a_run_in_one_pass(base_dir, tmp_path):
    import sqlite3

    from lorahive.runtime import run as runs
    from tiny_runs import checkpoint_tensors, tiny_config

    for name, over in (("one", []), ("parts", ["agent.rows_per_pass=1"])):  # 2 support rows per agent: a pass each
        runs.start(tiny_config(base_dir, [*over, "agent.fast_steps=2", "agent.anchor=1.0"]), tmp_path / name)
    decisions = "SELECT tick, agent, level, decision, reason FROM proposals ORDER BY id"
    a, b = (sqlite3.connect(tmp_path / n / "ledger.sqlite").execute(decisions).fetchall() for n in ("one", "parts"))
    assert a == b and len(a) == 6
    want, got = checkpoint_tensors(tmp_path / "one"), checkpoint_tensors(tmp_path / "parts")
    assert want.keys() == got.keys()
    for k in want:
        if not k.endswith("rng/torch"):
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=k)
