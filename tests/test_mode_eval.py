"""Context modes at inference (runtime/mode_eval.py): each evaluated task type's prompts pick a mode as the router
picks one in a tick, the type is scored with the context level holding it, the slots come back unchanged, and the
run's ledger names the mode each type took."""

from __future__ import annotations

import torch

from conftest import make_model, small_stack
from lorahive import Hive
from lorahive.config import ContextModesConfig
from lorahive.core import persistent_levels
from lorahive.mechanisms.base import TickView
from lorahive.mechanisms.context_modes import ContextModes
from lorahive.runtime import mode_eval
from lorahive.runtime.agent import evaluate
from lorahive.runtime.mode_eval import evaluate_with_modes
from lorahive.suites.task import Task
from tiny_runs import tiny_config

SUPPORT = {"ann": [("Sports: the team won the match.", " Sports")], "bob": [("World: the summit ended.", " World")]}
LABELS = ("Sports", "World")
TASKS = {
    "sports": Task("sports", [], [("Sports: the team won the match.", "Sports"), ("Sports: the team won the match.", "World")], labels=LABELS),
    "world": Task("world", [], [("World: the summit ended.", "World"), ("World: the summit ended.", "Sports")], labels=LABELS),
}


def _slots(hive: Hive) -> list[torch.Tensor]:
    return [t.detach().clone() for bank in hive.core.banks("context") for t in (bank.A, bank.B)]


def _two_modes(tokenizer) -> tuple[Hive, ContextModes]:
    """A hive whose context level holds two modes, ann's and bob's, each with a pattern of its own."""
    hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    hive.add_agents(["ann", "bob"])
    cm = ContextModes(ContextModesConfig(enabled=True, modes=2, open_rule="cosine", open_below=0.99), "context")
    view = TickView(1, "draw", [], (), {}, hive.core.states, hive.core, support={a: list(e) for a, e in SUPPORT.items()}, shared={})
    action = cm.run(view)
    assert action is not None and action.detail["modes"] == {"ann": 0, "bob": 1}
    gen = torch.Generator().manual_seed(3)
    for agent in ("ann", "bob"):
        pattern = {p: (torch.randn(b.out_features, 1, generator=gen), torch.randn(1, b.in_features, generator=gen)) for p, b in hive.core.named_banks("context")}
        hive.core.add_delta("context", hive.core.slot_of("context", agent), pattern)
    done = cm.run(TickView(1, "decay", [], (), {}, hive.core.states, hive.core, support={}, quality={"ann": 1.0, "bob": 1.0}, quality_bar=0.5))
    assert done is not None and done.detail["reinforced"] == {"0": ["ann"], "1": ["bob"]}
    return hive, cm


def test_each_type_is_scored_with_its_mode_and_the_slots_come_back(tokenizer, monkeypatch):
    hive, cm = _two_modes(tokenizer)
    hive.core.reset("context", [hive.core.slot_of("context", a) for a in ("ann", "bob")])  # the slots now differ from both modes
    before = _slots(hive)
    levels = persistent_levels(hive.stack)
    seen: dict[str, tuple[list[str], list[torch.Tensor]]] = {}

    def spy(h, agents, tasks, lv=None):  # what each type was scored with: the levels and the context slots
        [task_type] = tasks
        seen[task_type] = (list(lv), _slots(h))
        return evaluate(h, agents, tasks, lv)

    monkeypatch.setattr(mode_eval, "evaluate", spy)
    got, picks = evaluate_with_modes(hive, cm, ["ann", "bob"], TASKS, levels)

    assert picks == {"sports": 0, "world": 1}  # the prompts ann's and bob's modes were opened by
    assert all(torch.equal(x, y) for x, y in zip(_slots(hive), before, strict=True))
    for task_type, mode in picks.items():  # the definition: the mode in every agent's context slot, the context level on
        cm.load_mode(hive.core, ["ann", "bob"], mode)
        assert seen[task_type][0] == [*levels, "context"]
        assert all(torch.equal(x, y) for x, y in zip(seen[task_type][1], _slots(hive), strict=True))
        want = evaluate(hive, ["ann", "bob"], {task_type: TASKS[task_type]}, [*levels, "context"])
        for a in ("ann", "bob"):
            assert got[a][task_type] == want[a][task_type]
    assert not all(torch.equal(x, y) for x, y in zip(seen["sports"][1], seen["world"][1], strict=True))


def test_without_an_open_mode_or_without_modes_it_is_plain_evaluation(tokenizer):
    hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    hive.add_agents(["ann", "bob"])
    levels = persistent_levels(hive.stack)
    want = evaluate(hive, ["ann", "bob"], TASKS, levels)
    fresh = ContextModes(ContextModesConfig(enabled=True, modes=2), "context")
    assert evaluate_with_modes(hive, fresh, ["ann", "bob"], TASKS, levels) == (want, {})
    assert evaluate_with_modes(hive, None, ["ann", "bob"], TASKS, levels) == (want, {})


def test_in_a_run_the_ledger_names_each_evaluated_types_mode(base_dir, tmp_path):
    from lorahive.observe.ledger import Ledger
    from lorahive.runtime import run as runs

    on = ["mechanisms.context_modes.enabled=true", "mechanisms.context_modes.open_below=0.0", "ticks=3"]
    runs.start(tiny_config(base_dir, on), tmp_path / "on")  # agent0 and agent2 on agnews, agent1 on yelp
    runs.start(tiny_config(base_dir, [*on, "mechanisms.context_modes.at_inference=false"]), tmp_path / "off")

    with Ledger(tmp_path / "on" / "ledger.sqlite") as ledger:
        events = ledger.events("mechanism:context_modes")
    routes = [e["detail"]["modes"] for e in events if e["detail"]["action"] == "route"]
    evals = [e["detail"]["modes"] for e in events if e["detail"]["action"] == "eval_route"]
    assert evals, "the evaluation after learning routes through the modes"
    for picked in evals:  # each type takes the mode its agents were routed to in the ticks
        assert picked == {"agnews": routes[-1]["agent0"], "yelp": routes[-1]["agent1"]}
    with Ledger(tmp_path / "off" / "ledger.sqlite") as ledger:
        assert not [e for e in ledger.events("mechanism:context_modes") if e["detail"]["action"] == "eval_route"]
