"""Bad input to the Hive fails with a clear ValueError and changes nothing."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model, small_stack
from lorahive import Hive
from lorahive.config import LevelSpec, StackSpec


def _state(hive: Hive) -> dict[str, torch.Tensor]:
    return {f"{lv.name}:{k}": p.detach().clone() for lv in hive.levels for k, p in hive.core.level_params(lv.name).items()}


def _unchanged(hive: Hive, before: dict[str, torch.Tensor]) -> bool:
    after = _state(hive)
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_unknown_agent_is_named(hive):
    with pytest.raises(ValueError, match="unknown agents: zed"):
        hive.logits(["hi"], ["zed"])


def test_learn_with_unknown_agent_changes_nothing(hive):
    before = _state(hive)
    with pytest.raises(ValueError, match="unknown agents: zed"):
        hive.learn({"ann": [("great", " positive")], "zed": [("great", " positive")]})
    assert _unchanged(hive, before)


def test_empty_example_list_is_refused_and_nothing_is_half_applied(hive):
    before = _state(hive)
    with pytest.raises(ValueError, match="'bob': the example list is empty"):
        hive.learn({"ann": [("great", " positive")], "bob": []})
    assert _unchanged(hive, before)


def test_empty_examples_mapping_is_refused(hive):
    with pytest.raises(ValueError, match="non-empty mapping"):
        hive.learn({})


def test_answer_that_tokenizes_to_nothing_is_refused(hive):
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        hive.learn({"ann": [("great", "")]})


def test_prompt_overflowing_the_context_is_refused(hive):
    before = _state(hive)
    with pytest.raises(ValueError, match="the context holds 128"):
        hive.learn({"ann": [("great " * 200, " positive")]})
    with pytest.raises(ValueError, match="the context holds"):
        hive.logits(["great " * 200], ["ann"])
    assert _unchanged(hive, before)


def test_malformed_example_is_refused(hive):
    with pytest.raises(ValueError, match=r"\(prompt, answer\) pair"):
        hive.learn({"ann": ["just a string"]})  # type: ignore[list-item]


def test_prompt_and_agent_counts_must_match(hive):
    with pytest.raises(ValueError, match="2 prompts but 1 agents"):
        hive.generate(["a", "b"], ["ann"])


def test_unknown_level_in_ablation_is_named(hive):
    with pytest.raises(ValueError, match="unknown levels: nope"):
        hive.logits(["great"], ["ann"], levels=["nope"])


def test_duplicate_agent_names_are_refused(hive):
    with pytest.raises(ValueError, match="already taken: ann"):
        hive.add_agent("ann")
    assert hive.agents == ["ann", "bob", "cyd"]


def test_level_targeting_no_module_is_refused(tokenizer):
    stack = StackSpec(levels=(LevelSpec(name="x", rank=2, alpha=2, scope="shared", inertia=0, lr=1e-3, targets=("nothing",)),))
    with pytest.raises(ValueError, match="match no nn.Linear"):
        Hive(make_model(len(tokenizer)), tokenizer, stack)


def test_unknown_base_model_says_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match="neither an embedded model"):
        Hive.load(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="unknown embedded model"):
        Hive.load("embedded:gpt-17")


def test_slots_grow_when_agents_are_added(tokenizer):
    hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack())
    hive.add_agents([f"a{i}" for i in range(5)])
    assert hive.core.n_slots("agent") >= 5 and hive.core.n_slots("swarm") == 1
    out = hive.logits(["great"] * 5, hive.agents)
    assert out.shape[0] == 5
