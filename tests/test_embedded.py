"""The real embedded SmolLM2-135M: exactness of a fresh hive and isolation between agents."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from lorahive import Hive, LevelSpec, StackSpec
from lorahive.base import home, load_base
from lorahive.learning.batching import pack_prompts
from lorahive.learning.objective import last_logits

pytestmark = pytest.mark.embedded

PROMPT = "Classify the sentiment. Review: the food was wonderful. Answer:"
EXAMPLE = (PROMPT, " positive")


@pytest.fixture(scope="module")
def loaded():
    return load_base("embedded:smollm2-135m", device="cpu")


def _fresh(loaded, levels=None) -> Hive:
    model = AutoModelForCausalLM.from_pretrained(loaded.source, local_files_only=True, dtype=torch.float32).eval()
    hive = Hive(model, loaded.tokenizer, levels)
    hive.add_agents(["ann", "bob"])
    return hive


def _own_slots(hive: Hive, agent: str) -> dict[str, torch.Tensor]:
    return {
        f"{lv.name}:{k}": p.detach()[hive.core.slot_of(lv.name, agent)].clone()
        for lv in hive.levels
        if lv.scope != "shared"
        for k, p in hive.core.level_params(lv.name).items()
    }


def test_embedded_model_is_cached_as_safetensors(loaded):
    cache = home() / "models" / "smollm2-135m"
    assert (cache / "config.json").is_file()
    assert list(cache.glob("*.safetensors"))
    assert loaded.model.config.model_type == "llama"


def test_fresh_hive_equals_bare_model(loaded):
    bare = loaded.model
    batch = pack_prompts(loaded.tokenizer, [PROMPT, "Hi"], 8192)
    with torch.no_grad():
        same_path = last_logits(bare, batch)
        hf_forward = bare(**loaded.tokenizer(PROMPT, return_tensors="pt")).logits[:, -1].float()
    hive = _fresh(loaded)

    got = hive.logits([PROMPT, "Hi"], ["ann", "bob"])

    assert torch.equal(got, same_path)  # bit-identical through the same code path
    torch.testing.assert_close(got[:1], hf_forward, rtol=1e-4, atol=1e-4)  # and HF's own forward


def test_one_learn_step_lowers_the_loss_and_leaves_other_agents_slots_alone(loaded):
    hive = _fresh(loaded)
    bob_before = _own_slots(hive, "bob")
    start = hive.loss({"ann": [EXAMPLE]})["ann"]

    hive.learn({"ann": [EXAMPLE]}, steps=1)

    assert hive.loss({"ann": [EXAMPLE]})["ann"] < start
    bob_after = _own_slots(hive, "bob")
    assert all(torch.equal(bob_before[k], bob_after[k]) for k in bob_before)


def test_per_agent_levels_only_leave_other_agents_logits_bit_identical(loaded):
    stack = StackSpec(
        levels=(
            LevelSpec(name="agent", rank=8, alpha=16, scope="agent", inertia=0.5, lr=1e-3),
            LevelSpec(name="context", rank=4, alpha=8, scope="task", inertia=0.1, lr=2e-3),
        )
    )
    hive = _fresh(loaded, stack)
    bob_before = hive.logits([PROMPT], ["bob"])
    ann_before = hive.logits([PROMPT], ["ann"])

    hive.learn({"ann": [EXAMPLE]}, steps=1)

    assert torch.equal(hive.logits([PROMPT], ["bob"]), bob_before)
    assert not torch.equal(hive.logits([PROMPT], ["ann"]), ann_before)
