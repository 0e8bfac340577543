"""The foundation anchor: KL(base ‖ hive) on the prompts' text, added to what learning minimises."""

from __future__ import annotations

import torch

from conftest import make_model, small_stack
from lorahive.learning.batching import IGNORE, pack_examples
from lorahive.learning.objective import anchor_logp, anchored_nll
from lorahive.runtime.hive import Hive

EXAMPLES = {
    "ann": [("the cat sat on the mat and looked around", " yes"), ("a dog ran far away from home", " no")],
    "bob": [("rain fell all day over the quiet town", " no")],
}


def _hive(tokenizer) -> Hive:
    h = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    h.add_agents(["ann", "bob"])
    return h


def _prompt_kl(hive: Hive) -> float:
    """Mean KL(base ‖ hive) of the next token over every prompt position of EXAMPLES."""
    rows = [ex for exs in EXAMPLES.values() for ex in exs]
    owners = [a for a, exs in EXAMPLES.items() for _ in exs]
    batch = pack_examples(hive.tokenizer, rows, hive.core.max_length, anchor_positions=1000)
    with hive.core.routing.use(hive.core.route(owners, levels=[])):
        base = anchor_logp(hive.model, batch)
    with torch.no_grad(), hive.core.routing.use(hive.core.route(owners)):
        _, _, kl = anchored_nll(hive.model, batch, base)
    return float(kl.mean())


def test_anchor_positions_predict_prompt_tokens_evenly_spaced(tokenizer):
    rows = [ex for exs in EXAMPLES.values() for ex in exs]
    batch = pack_examples(tokenizer, rows, 512, anchor_positions=4)
    assert batch.anchor_at is not None and batch.labels is not None
    for r in range(len(rows)):
        pos = batch.anchor_at[1][batch.anchor_at[0] == r].tolist()
        assert len(pos) == 4 and pos == sorted(set(pos))
        for t in pos:  # position t predicts token t + 1, which must be a prompt token
            assert batch.labels[r, t + 1] == IGNORE and batch.attention_mask[r, t + 1] == 1
        assert pos[0] == 0  # spaced over the whole prompt, first to last
    assert pack_examples(tokenizer, rows, 512).anchor_at is None


def test_the_anchor_is_zero_for_a_fresh_hive_and_off_changes_nothing(tokenizer):
    torch.manual_seed(0)
    a, b = _hive(tokenizer), _hive(tokenizer)
    assert _prompt_kl(a) == 0.0  # every B is zero: the hive is its base

    a.learn(EXAMPLES, steps=2, anchor=0.0)
    b.learn(EXAMPLES, steps=2)
    for lv in a.levels:
        for pa, pb in zip(a.core.level_params(lv.name).values(), b.core.level_params(lv.name).values(), strict=True):
            assert torch.equal(pa, pb)


def test_the_anchor_keeps_the_prompts_text_closer_to_the_base(tokenizer):
    free, anchored = _hive(tokenizer), _hive(tokenizer)
    for _ in range(4):
        free.learn(EXAMPLES, steps=2)
        anchored.learn(EXAMPLES, steps=2, anchor=5.0)

    kl_free, kl_anchored = _prompt_kl(free), _prompt_kl(anchored)
    assert kl_free > 0 and kl_anchored < 0.8 * kl_free, (kl_free, kl_anchored)
    # the answers are still learned: the answer loss went down from where it started
    start = _hive(tokenizer).loss(EXAMPLES)
    after = anchored.loss(EXAMPLES)
    assert all(after[a] < start[a] for a in EXAMPLES), (start, after)


def test_proposals_carry_the_anchor(tokenizer):
    h = _hive(tokenizer)
    h.learn(EXAMPLES, steps=3)  # move away from the base, so the anchor has a gradient
    plain, _ = h.propose(EXAMPLES, "swarm")
    anchored, _ = h.propose(EXAMPLES, "swarm", anchor=5.0)
    diff = sum(float((plain["ann"][k] - anchored["ann"][k]).abs().sum()) for k in plain["ann"])
    assert diff > 0


def _forget(hive: Hive) -> None:
    """Drop the base log-probabilities ``hive`` keeps, so its next anchored call pays the base pass."""
    hive._anchor_memo.clear()


def test_the_base_pass_is_paid_once_for_rows_already_seen_and_learning_is_unchanged(tokenizer, monkeypatch):
    import lorahive.runtime.hive as hive_module

    plain, memo = _hive(tokenizer), _hive(tokenizer)
    calls = {"n": 0}

    def counted(model, batch):
        calls["n"] += model is memo.model
        return anchor_logp(model, batch)

    monkeypatch.setattr(hive_module, "anchor_logp", counted)
    for _ in range(3):
        memo.learn(EXAMPLES, steps=1, anchor=1.0)
        _forget(plain)  # the reference pays the pass every time
        plain.learn(EXAMPLES, steps=1, anchor=1.0)
    assert calls["n"] == 1
    some = {"bob": EXAMPLES["bob"], "ann": EXAMPLES["ann"][1:]}  # some of the kept rows, in another order: no new pass
    memo.learn(some, steps=1, anchor=1.0)
    _forget(plain)
    plain.learn(some, steps=1, anchor=1.0)
    assert calls["n"] == 1
    other = {"ann": [("the sun rose over the hills", " yes")]}  # rows not kept: a new pass
    memo.learn(other, steps=1, anchor=1.0)
    plain.learn(other, steps=1, anchor=1.0)
    assert calls["n"] == 2
    for (name, a), (_, b) in zip(memo.core.level_params("agent").items(), plain.core.level_params("agent").items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
