"""Level specs fail at construction, naming the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lorahive import LevelSpec, StackSpec, default_levels

GOOD = dict(name="agent", rank=8, alpha=16, scope="agent", inertia=0.5, lr=1e-3)


def test_default_stack_is_the_five_levels_of_the_design():
    stack = default_levels()
    assert stack.names() == ["foundation", "domain", "swarm", "agent", "context"]
    assert [lv.rank for lv in stack.levels] == [64, 32, 16, 8, 4]
    assert [lv.inertia for lv in stack.levels] == [0.99, 0.9, 0.7, 0.5, 0.1]
    assert [lv.scope for lv in stack.levels] == ["shared", "shared", "shared", "agent", "task"]
    assert not stack.get("foundation").trainable


@pytest.mark.parametrize(
    ("field", "value"),
    [("rank", 0), ("rank", -3), ("scope", "galaxy"), ("inertia", 1.5), ("inertia", -0.1), ("lr", 0), ("name", "")],
)
def test_invalid_level_field_is_named(field, value):
    with pytest.raises(ValidationError) as err:
        LevelSpec(**{**GOOD, field: value})
    assert field in str(err.value)


def test_duplicate_level_names_are_refused():
    with pytest.raises(ValidationError, match="duplicated: agent"):
        StackSpec(levels=(LevelSpec(**GOOD), LevelSpec(**GOOD)))


def test_empty_stack_is_refused():
    with pytest.raises(ValidationError, match="levels"):
        StackSpec(levels=())


def test_step_size_is_lr_times_one_minus_inertia():
    assert LevelSpec(**GOOD).step_size == pytest.approx(1e-3 * 0.5)
