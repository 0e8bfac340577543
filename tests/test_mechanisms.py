"""The mechanism protocol: registration through the builder, phases, ledger events, checkpointed state."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from lorahive import Hive
from lorahive.config import RunConfig
from lorahive.mechanisms import PHASES, Action, Mechanism, TickView
from lorahive.mechanisms.registry import (
    DEFAULT_FACTORIES,
    build_mechanisms,
    join_states,
    split_states,
)
from lorahive.observe.ledger import Ledger
from lorahive.runtime import run as runs
from lorahive.runtime.stream import method_stack
from lorahive.runtime.swarm import Swarm
from lorahive.store import checkpoint
from tiny_runs import checkpoint_tensors, tiny_config


class Counter:
    """A toy mechanism: counts the ticks it ran in and sums their numbers in a tensor."""

    name = "counter"
    phases: tuple[str, ...] = ("detect",)

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.count = 0
        self.seen: list[tuple[str, int, bool]] = []  # (phase, tick, had decisions)
        self.total = torch.zeros(())

    def run(self, view: TickView) -> Action | None:
        self.seen.append((view.phase, view.tick, bool(view.decisions)))
        self.count += 1
        self.total = self.total + view.tick
        return Action("counted", {"count": self.count})

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "total": self.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.total = int(state["count"]), state["total"].clone()


def _counter_factory(enabled: bool = True):
    def factory(cfg: RunConfig, agents: Sequence[str]) -> Mechanism | None:
        return Counter(enabled)

    return factory


def _swarm(base_dir: Path, tmp_path: Path, enabled: bool = True, name: str = "ledger") -> tuple[Swarm, Counter]:
    cfg = tiny_config(base_dir, ticks=2)
    hive = Hive.load(cfg.base, method_stack(cfg), device="cpu", seed=cfg.seed)
    data = runs.load_data(cfg)
    mechanisms = build_mechanisms(cfg, [f"agent{i}" for i in range(cfg.agents)], [*DEFAULT_FACTORIES, _counter_factory(enabled)])
    swarm = Swarm(hive, cfg, data, Ledger(tmp_path / f"{name}.sqlite"), mechanisms=mechanisms)
    counter = swarm.mechanisms[-1]
    assert isinstance(counter, Counter)
    return swarm, counter


def test_a_registered_mechanism_runs_in_its_phase_after_aggregation(base_dir, tmp_path):
    swarm, counter = _swarm(base_dir, tmp_path)
    swarm.tick()
    swarm.tick()
    assert counter.seen == [("detect", 1, True), ("detect", 2, True)]
    swarm.ledger.close()


def test_its_action_lands_in_the_ledger_as_an_event_with_its_name(base_dir, tmp_path):
    swarm, _ = _swarm(base_dir, tmp_path)
    swarm.tick()
    swarm.tick()
    events = swarm.ledger.events("mechanism:counter")
    assert [(e["tick"], e["detail"]) for e in events] == [(1, {"action": "counted", "count": 1}), (2, {"action": "counted", "count": 2})]
    swarm.ledger.close()


def test_its_state_survives_checkpoint_and_resume(base_dir, tmp_path):
    swarm, counter = _swarm(base_dir, tmp_path)
    swarm.tick()
    swarm.tick()
    checkpoint.save(tmp_path / "run", swarm.hive.core, swarm.state(), swarm.tensors())
    swarm.ledger.close()

    fresh, restored = _swarm(base_dir, tmp_path, name="fresh")
    loaded = checkpoint.load(tmp_path / "run", fresh.hive.core)
    fresh.load_state(loaded.state, loaded.extra)

    assert restored.count == 2 and torch.equal(restored.total, counter.total)
    assert loaded.state["mechanisms"]["counter"] == {"count": 2}  # JSON in state.json, the tensor beside it
    assert "mechanism/counter/total" in loaded.extra
    fresh.ledger.close()


def test_a_disabled_mechanism_does_not_run(base_dir, tmp_path):
    swarm, counter = _swarm(base_dir, tmp_path, enabled=False)
    swarm.tick()
    assert counter.seen == [] and swarm.ledger.events("mechanism:counter") == []
    swarm.ledger.close()


def test_the_builder_refuses_unknown_phases_and_duplicate_names(base_dir):
    cfg = tiny_config(base_dir)

    def bad_phase(cfg: RunConfig, agents: Sequence[str]) -> Mechanism | None:
        m = Counter()
        m.phases = ("lunch",)
        return m

    with pytest.raises(ValueError, match="unknown phases"):
        build_mechanisms(cfg, ["a"], [bad_phase])
    with pytest.raises(ValueError, match="unique"):
        build_mechanisms(cfg, ["a"], [_counter_factory(), _counter_factory()])
    assert "detect" in PHASES


def test_split_and_join_states_round_trip():
    states = {"a": {"n": 1, "v": torch.ones(2)}, "b": {}}
    plain, tensors = split_states(states)
    assert plain == {"a": {"n": 1}, "b": {}} and set(tensors) == {"mechanism/a/v"}
    joined = join_states(plain, tensors)
    assert joined["a"]["n"] == 1 and torch.equal(joined["a"]["v"], torch.ones(2)) and joined["b"] == {}


def test_resonance_keeps_its_direction_as_a_mechanism_and_records_it(base_dir, tmp_path):
    """Horizontal resonance's direction is the `resonance` mechanism's state; its actions are ledger events."""
    cfg = tiny_config(base_dir, ticks=3)
    runs.start(cfg, tmp_path / "run")
    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        events = ledger.events("mechanism:resonance")
    assert [e["tick"] for e in events] == [1, 2, 3]
    detail = events[-1]["detail"]
    detail = json.loads(detail) if isinstance(detail, str) else detail
    assert detail["levels"] == ["swarm"] and len(detail["cosines"]) == len(detail["agents"]) > 0
    assert all(c is not None for c in detail["cosines"])  # from tick 2 on there is a direction to compare with
    tensors = checkpoint_tensors(tmp_path / "run")
    direction = tensors["extra.safetensors:mechanism/resonance/direction/swarm"]
    assert torch.isclose(direction.norm(), torch.tensor(1.0), atol=0.2) and not any("agg/" in k for k in tensors)
