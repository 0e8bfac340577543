"""The output head of a frozen model reads a contiguous input: one ``mm`` over the vocabulary, not a ``bmm``.

With ``logits_to_keep=1`` the head gets ``hidden[:, -1:, :]``; once the base is frozen, torch's matmul would run it
as a batched product with the vocabulary matrix expanded per row (docs/performance.md, the profiled forward).
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from conftest import make_model, randomize_b, small_stack
from lorahive import Hive


def head_ops(model, hive: Hive | None, ids: torch.Tensor, agents: list[str]) -> list[tuple[str, list]]:
    """(op name, input shapes) of every matmul-like op whose output has the vocabulary's width."""
    vocab = model.config.vocab_size
    mask = torch.ones_like(ids)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        if hive is None:
            model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
        else:
            with hive.core.routing.use(hive.core.route(agents)):
                model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
    ops = []
    for ev in prof.events():
        if ev.name in ("aten::mm", "aten::bmm", "aten::addmm") and ev.input_shapes and any(s and s[-1] == vocab for s in ev.input_shapes):
            ops.append((ev.name, ev.input_shapes))
    return ops


def test_frozen_head_runs_as_one_mm(tokenizer):
    ids = torch.randint(2, len(tokenizer), (6, 9))
    bare = make_model(len(tokenizer))
    want = bare(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1).logits
    hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    hive.add_agents(["ann", "bob"])
    agents = ["ann", "bob", "ann", "bob", "bob", "ann"]
    ops = head_ops(hive.model, hive, ids, agents)
    assert ops, "the head's product was not seen"
    assert {name for name, _ in ops} <= {"aten::mm", "aten::addmm"}, ops
    assert all(len(shapes[0]) == 2 and shapes[0][0] == 6 for _, shapes in ops), ops  # one row per sequence, folded
    # the B = 0 hive computes what the bare model does
    with torch.no_grad(), hive.core.routing.use(hive.core.route(agents)):
        got = hive.model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1).logits
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-5)


def test_head_fold_keeps_gradients_and_values(tokenizer):
    hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    hive.add_agents(["ann"])
    randomize_b(hive)
    ids = torch.randint(2, len(tokenizer), (3, 7))
    head = hive.model.get_output_embeddings()
    hidden = torch.randn(3, 7, hive.model.config.hidden_size, requires_grad=True)
    view = hidden[:, -1:, :]
    assert not view.is_contiguous()
    out = head(view)
    torch.testing.assert_close(out, view.detach() @ head.weight.T)
    out.sum().backward()
    assert hidden.grad is not None and hidden.grad[:, :-1].abs().sum() == 0 and hidden.grad[:, -1].abs().sum() > 0
    # the whole model still learns through the kept position
    bank = next(iter(hive.core.banks("agent")))
    bank.B.grad = None
    with hive.core.routing.use(hive.core.route(["ann"] * 3)):
        hive.model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1).logits.sum().backward()
    assert bank.B.grad is not None and bank.B.grad.abs().sum() > 0
