"""DESIGN.md invariants 1–3 on a tiny random Llama."""

from __future__ import annotations

import torch

from conftest import make_model, randomize_b, small_stack
from lorahive import Hive
from lorahive.learning.batching import pack_prompts
from lorahive.learning.objective import last_logits

PROMPTS = ["The capital of France is", "Question: what colour", "Sports: the team", "great"]


def test_fresh_hive_logits_are_bit_identical_to_bare_model(tokenizer):
    bare = make_model(len(tokenizer))
    batch = pack_prompts(tokenizer, PROMPTS, 128)
    expected = last_logits(bare, batch)
    hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack())
    hive.add_agents(["a", "b"])

    got = hive.logits(PROMPTS, ["a", "b", "a", "b"])

    assert torch.equal(got, expected)


def test_mixed_batch_equals_each_row_alone(hive):
    randomize_b(hive)
    agents = ["ann", "bob", "cyd", "bob"]

    mixed = hive.logits(PROMPTS, agents)

    for i, (p, a) in enumerate(zip(PROMPTS, agents, strict=True)):
        alone = hive.logits([p], [a])
        torch.testing.assert_close(mixed[i : i + 1], alone, rtol=1e-5, atol=1e-5)


def test_agents_differ_once_their_levels_differ(hive):
    randomize_b(hive)
    out = hive.logits([PROMPTS[0]] * 2, ["ann", "bob"])
    assert not torch.allclose(out[0], out[1])


def test_generation_of_a_mixed_batch_equals_rows_alone(hive):
    randomize_b(hive, scale=0.3)
    agents = ["ann", "bob", "cyd"]
    mixed = hive.generate(PROMPTS[:3], agents, max_new_tokens=6)
    alone = [hive.generate([p], [a], max_new_tokens=6)[0] for p, a in zip(PROMPTS[:3], agents, strict=True)]
    assert mixed == alone
    assert all(isinstance(s, str) for s in mixed)


def _snapshot(hive: Hive, level: str, slot: int) -> dict[str, torch.Tensor]:
    snap = {k: p.detach()[slot].clone() for k, p in hive.core.level_params(level).items()}
    for name, st in hive.core.optimizers[level].state.items():
        for k, v in st.items():
            snap[f"opt:{name}:{k}"] = v[slot].clone()
    return snap


def test_untouched_slots_and_their_optimizer_state_are_unchanged(hive):
    hive.learn({"bob": [("Question: what colour is the sky? Answer:", " blue")]}, steps=2)  # bob has state now
    before = {lv: _snapshot(hive, lv, hive.core.slot_of(lv, "bob")) for lv in ("agent", "context")}

    hive.learn({"ann": [("The capital of France is", " Paris")], "cyd": [("great", " positive")]}, steps=3)

    for lv in ("agent", "context"):
        after = _snapshot(hive, lv, hive.core.slot_of(lv, "bob"))
        assert before[lv].keys() == after.keys()
        for k in before[lv]:
            assert torch.equal(before[lv][k], after[k]), f"{lv}:{k} moved"


def test_used_slots_and_shared_levels_move(hive):
    ann = hive.core.slot_of("agent", "ann")
    before_agent = {k: p.detach()[ann].clone() for k, p in hive.core.level_params("agent").items()}
    before_swarm = {k: p.detach().clone() for k, p in hive.core.level_params("swarm").items()}
    before_found = {k: p.detach().clone() for k, p in hive.core.level_params("foundation").items()}

    hive.learn({"ann": [("The capital of France is", " Paris")]}, steps=1)

    assert any(not torch.equal(v, hive.core.level_params("agent")[k].detach()[ann]) for k, v in before_agent.items())
    assert any(not torch.equal(v, hive.core.level_params("swarm")[k].detach()) for k, v in before_swarm.items())
    assert all(torch.equal(v, hive.core.level_params("foundation")[k].detach()) for k, v in before_found.items())


def test_a_few_learn_steps_drive_the_answer_loss_down(hive):
    ex = {"ann": [("Question: what colour is the sky? Answer:", " blue")], "bob": [("great", " terrible")]}
    start = hive.loss(ex)

    hive.learn(ex, steps=25)
    end = hive.loss(ex)

    for agent in ex:
        assert end[agent] < start[agent] * 0.7, (agent, start[agent], end[agent])


def test_level_ablation_switches_contributions_off(hive):
    randomize_b(hive)
    full = hive.logits(PROMPTS[:2], ["ann", "bob"])
    none = hive.logits(PROMPTS[:2], ["ann", "bob"], levels=[])
    bare = make_model(len(hive.tokenizer))
    expected = last_logits(bare, pack_prompts(hive.tokenizer, PROMPTS[:2], 128))
    torch.testing.assert_close(none, expected)
    assert not torch.allclose(full, none)


def test_slot_rows_carry_an_agents_slots_and_optimizer_state_into_another_core(tokenizer):
    """What a rank sends rank 0 at a checkpoint: another core that loads them continues bitwise as the one that trained them."""
    trained, other = (Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0) for _ in range(2))
    for h in (trained, other):
        h.add_agents(["ann", "bob"])
    examples = {"bob": [("Question: what colour is the sky? Answer:", " blue")]}
    trained.learn(examples, steps=2, levels=["agent", "context"])
    core = trained.core
    for lv in ("agent", "context"):
        slots = core.slots_of(lv, ["bob"])
        other.core.load_slot_rows(lv, slots, core.slot_rows(lv, slots))
        assert other.core.written[lv] == core.written[lv]

    losses = [h.learn(examples, steps=1, levels=["agent", "context"]) for h in (trained, other)]

    assert losses[0] == losses[1]
    for lv in ("agent", "context"):
        for a, b in zip(trained.core.banks(lv), other.core.banks(lv), strict=True):
            assert torch.equal(a.A, b.A) and torch.equal(a.B, b.B)
        sa, sb = trained.core.optimizers[lv].state_dict(), other.core.optimizers[lv].state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
