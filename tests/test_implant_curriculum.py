"""Volatility-budgeted curriculum (implant/curriculum.py): the budget holds, undone steps restore exactly, plain counterpart."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from conftest import small_stack
from implant_cases import two_agent_hive
from lorahive import Hive
from lorahive.implant import (
    compare_with_plain,
    curriculum_order,
    curriculum_writer,
    layer_band,
    make_variants,
    mean_kl,
    plain_writer,
    probe_logp,
    run_curriculum,
    run_plain,
    target_fit,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT, TARGET = "The capital of France is", " Paris"
PROBE = ["Sports: the team won the match.", "Question: what colour is the sky? Answer:", "positive negative neutral", "World: the summit ended."]


def _hive(tokenizer) -> Hive:
    return two_agent_hive(tokenizer, layer_band(small_stack(), "agent", [1]))


@pytest.fixture
def hive(tokenizer) -> Hive:
    return _hive(tokenizer)


@pytest.fixture
def variants(hive):
    return make_variants(hive, PROMPT, TARGET, n=50, seed=0)


def _slots(hive: Hive, agents=("ann", "bob")) -> dict[str, torch.Tensor]:
    return hive.core.slot_rows("agent", [hive.core.slot_of("agent", a) for a in agents])


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bitwise equal slot rows; optimizer state that one side has not created yet counts as zeros (what it starts as)."""
    if {k for k in a if not k.startswith("optim/")} != {k for k in b if not k.startswith("optim/")}:
        return False
    for k in a.keys() | b.keys():
        x, y = a.get(k), b.get(k)
        if x is None or y is None:
            if (x if y is None else y).any():
                return False
        elif not torch.equal(x, y):
            return False
    return True


def test_every_kept_step_stays_under_the_budget_and_the_logged_kl_is_the_models(hive, variants):
    free = run_curriculum(hive, "ann", "agent", PROMPT, TARGET, variants, PROBE, budget=1e9)  # what the steps cost unbounded
    hive.reset_slots("agent", ["ann"])
    budget = statistics.median(free.kl_series)  # about half the steps would break it at full size
    log = run_curriculum(hive, "ann", "agent", PROMPT, TARGET, variants, PROBE, budget=budget)
    assert log.undone_steps > 0 and log.accepted_steps > 0
    assert all(s.probe_kl <= budget for s in log.steps if s.accepted)
    assert all(s.probe_kl > budget for s in log.steps if not s.accepted)
    assert log.max_kl <= budget
    final = probe_logp(hive, "ann", PROBE)  # measured afresh, outside the curriculum
    kept = [s for s in log.steps if s.accepted]
    assert kept[-1].probe_kl_base == pytest.approx(float(mean_kl(probe_logp(hive, "ann", PROBE, levels=[]), final)), rel=1e-4)
    assert log.final_nll == pytest.approx(float(target_fit(hive, "ann", PROMPT, TARGET)[0]), rel=1e-5)


def test_a_budget_on_the_kl_to_the_base_bounds_the_drift_the_kept_steps_add_up_to(hive, variants):
    free = run_curriculum(hive, "ann", "agent", PROMPT, TARGET, variants, PROBE, budget=1e9)
    hive.reset_slots("agent", ["ann"])
    budget = free.final_kl_base / 3  # the unbounded run drifts three times further than this
    log = run_curriculum(hive, "ann", "agent", PROMPT, TARGET, variants, PROBE, budget=budget, reference="base")
    assert log.reference == "base" and log.accepted_steps > 0 and log.undone_steps > 0
    assert all(s.probe_kl_base <= budget for s in log.steps if s.accepted)
    assert float(mean_kl(probe_logp(hive, "ann", PROBE, levels=[]), probe_logp(hive, "ann", PROBE))) <= budget * (1 + 1e-4)
    assert log.final_nll < log.nll_before


def test_an_undone_step_puts_the_slot_back_bit_for_bit_optimizer_state_included(hive, variants):
    run_plain(hive, "ann", "agent", PROMPT, TARGET, [v.example for v in variants], steps=2)  # the slot and its moments are non-trivial
    before = _slots(hive)
    log = run_curriculum(hive, "ann", "agent", PROMPT, TARGET, variants, PROBE, budget=1e-12, halvings=3)
    assert log.accepted_steps == 0 and log.undone_steps > 0
    assert _equal(_slots(hive), before)
    assert log.final_nll == log.nll_before


def test_with_a_tiny_budget_each_batch_is_retried_at_half_the_step_down_to_the_floor(hive, variants):
    log = run_curriculum(hive, "ann", "agent", PROMPT, TARGET, variants, PROBE, budget=1e-12, per_step=10, rounds=1, halvings=3)
    lr = hive.stack.get("agent").step_size
    first = [s.lr for s in log.steps if s.examples == tuple(range(10))]
    assert first == pytest.approx([lr, lr / 2, lr / 4, lr / 8])
    assert [s.lr for s in log.steps[4:]] == pytest.approx([lr / 8] * 4)  # the step size reached carries on; one try each at the floor
    assert len(log.steps) == 8 and not any(s.accepted for s in log.steps)
    assert hive.core.states["agent"].lr == hive.stack.get("agent").lr  # the level's own rate is put back


def test_undoing_the_very_first_step_leaves_a_slot_that_learns_like_a_fresh_one(tokenizer, variants):
    undone, fresh = _hive(tokenizer), _hive(tokenizer)
    run_curriculum(undone, "ann", "agent", PROMPT, TARGET, variants, PROBE, budget=1e-12, halvings=0, rounds=1)
    assert _equal(_slots(undone), _slots(fresh))
    for h in (undone, fresh):
        h.learn({"ann": [v.example for v in variants[:5]]}, steps=2, levels=["agent"])
    assert _equal(_slots(undone), _slots(fresh))


def test_only_the_writing_agents_slot_of_the_written_level_moves(hive):
    others = {lv.name: hive.core.slot_rows(lv.name, [0]) for lv in hive.levels if lv.name != "agent"}
    bob = _slots(hive, ["bob"])
    log = curriculum_writer(hive, "ann", "agent", PROMPT, TARGET, PROBE, budget=1.0, seed=0)
    assert log.accepted_steps > 0
    assert _equal(_slots(hive, ["bob"]), bob)
    assert all(_equal(hive.core.slot_rows(name, [0]), rows) for name, rows in others.items())


def test_the_curriculum_lowers_the_target_nll(hive):
    log = curriculum_writer(hive, "ann", "agent", PROMPT, TARGET, PROBE, budget=1.0, seed=0, rounds=3)
    assert log.final_nll < 0.7 * log.nll_before
    assert float(target_fit(hive, "ann", PROMPT, TARGET)[0]) == pytest.approx(log.final_nll, rel=1e-5)


def test_plain_fine_tuning_takes_as_many_steps_as_the_curriculum_kept_and_the_hive_is_left_as_found(hive):
    before = _slots(hive)
    free = compare_with_plain(hive, "ann", "agent", PROMPT, TARGET, PROBE, budget=1e9, seed=0)
    budget = statistics.median(free.curriculum.kl_series)
    cmp = compare_with_plain(hive, "ann", "agent", PROMPT, TARGET, PROBE, budget=budget, seed=0)
    assert cmp.curriculum.undone_steps > 0
    assert cmp.plain.accepted_steps == len(cmp.plain.steps) == cmp.curriculum.accepted_steps
    assert sorted(cmp.plain.examples) == sorted(cmp.curriculum.examples)  # the same examples, another order
    assert cmp.plain.examples != cmp.curriculum.examples
    assert cmp.curriculum.nll_before == cmp.plain.nll_before  # the same start
    assert _equal(_slots(hive), before)
    summary = cmp.summary()
    assert set(summary) == {"curriculum", "plain"}
    for part in summary.values():
        assert {"kl_series", "max_kl", "final_kl_base", "final_nll", "final_correct"} <= set(part)
        assert len(part["kl_series"]) == cmp.curriculum.accepted_steps


def test_plain_writer_takes_exactly_its_steps_on_the_one_example(hive):
    log = plain_writer(hive, "ann", "agent", PROMPT, TARGET, steps=6, seed=0)
    assert len(log.steps) == log.accepted_steps == 6
    assert log.examples == [(PROMPT, TARGET)]
    assert all(math.isnan(s.probe_kl) for s in log.steps)
    assert log.final_nll < log.nll_before


def test_the_order_runs_from_the_smallest_change_to_the_largest(variants):
    ordered = curriculum_order(variants)
    keys = [(v.distance, len(v.answer_ids)) for v in ordered]
    assert keys == sorted(keys)
    assert ordered[0].kind == "growth" and len(ordered[0].answer_ids) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"budget": 0.0}, "budget"), ({"budget": math.inf}, "budget"), ({"probe": []}, "probe"), ({"level": "foundation"}, "level"),
     ({"agent": "zed"}, "unknown agents"), ({"per_step": 0}, "per_step"), ({"rounds": 0}, "rounds"), ({"halvings": -1}, "halvings"), ({"reference": "both"}, "reference")],
)  # fmt: skip
def test_bad_input_is_refused_naming_what_is_wrong(hive, variants, kwargs, match):
    args = {"agent": "ann", "level": "agent", "probe": PROBE, "budget": 0.1} | kwargs
    extra = {k: args.pop(k) for k in ("per_step", "rounds", "halvings", "reference") if k in args}
    with pytest.raises(ValueError, match=match):
        run_curriculum(hive, args["agent"], args["level"], PROMPT, TARGET, variants, args["probe"], args["budget"], **extra)
