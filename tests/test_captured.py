"""CapturedForward (core/captured.py): one batch shape's forward with static buffers, replayed from a CUDA graph.

On the CPU the static routing runs eagerly, and must give what the hive's ordinary routing gives, call after
call, whatever agents the rows hold (to rounding: the ordinary routing runs a one-agent batch as one-slot terms and
skips zero levels, the static one never does); on CUDA the replayed graph must give what the eager forward gives —
with more distinct agents than at capture, after learning, after agents were added (the banks moved), and
with a level that was zero when the graph was recorded.
"""

from __future__ import annotations

import pytest
import torch

from conftest import make_model, randomize_b, small_stack
from lorahive import Hive
from lorahive.adapters import fused
from lorahive.core import CapturedForward

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
MIXES = [["a0"] * 4, ["a0", "a1", "a0", "a1"], ["a0", "a1", "a2", "a3"], ["a3"] * 4, ["a2", "a0", "a3", "a1"]]


def _hive(tokenizer, device: str = "cpu", random_b: bool = True) -> Hive:
    hive = Hive(make_model(len(tokenizer)).to(device), tokenizer, small_stack(), seed=0)
    hive.add_agents([f"a{i}" for i in range(4)])
    if random_b:
        randomize_b(hive, scale=0.2)
    return hive


def _ids(vocab: int, device: str, seed: int) -> torch.Tensor:
    return torch.randint(3, vocab, (4, 12), generator=torch.Generator().manual_seed(seed)).to(device)


def _eager(hive: Hive, ids: torch.Tensor, agents: list[str], keep: int = 1) -> torch.Tensor:
    with torch.no_grad(), hive.core.routing.use(hive.core.route(agents)):
        return hive.model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=keep, use_cache=False).logits


def test_the_static_routing_gives_the_hives_logits_for_any_agents_call_after_call(tokenizer):
    hive = _hive(tokenizer)
    cap = CapturedForward(hive.core, 4, 12, logits_to_keep=0)
    assert not cap.graph
    for i, agents in enumerate(MIXES):
        ids = _ids(len(tokenizer), "cpu", i)
        torch.testing.assert_close(cap(ids, agents), _eager(hive, ids, agents, keep=0), rtol=1e-4, atol=5e-5)


@pytest.mark.parametrize("columns", [0, 10_000])
def test_per_row_levels_gathered_or_dense_give_the_hives_logits(tokenizer, monkeypatch, columns):
    """Gathered per row (no dense columns allowed) or every slot at once, masked per row (adapters/dense.py)."""
    monkeypatch.setattr(fused, "DENSE_COLUMNS", columns)
    hive = _hive(tokenizer)
    cap = CapturedForward(hive.core, 4, 12, logits_to_keep=0)
    for i, agents in enumerate(MIXES):
        ids = _ids(len(tokenizer), "cpu", i)
        torch.testing.assert_close(cap(ids, agents), _eager(hive, ids, agents, keep=0), rtol=1e-4, atol=5e-5)
    assert {layer.pooled.dense for layer in hive.core.layers.values() if layer.pooled is not None} == {columns > 0}


def test_dense_modules_with_different_levels_keep_their_own_row_scales(tokenizer):
    """A level on some modules only: modules whose dense columns split differently (one-slot vs per-row) with the same count."""
    from lorahive.config import LevelSpec, StackSpec

    levels = (
        LevelSpec(name="swarm", rank=4, alpha=4, scope="shared", inertia=0.7, lr=1e-2),
        LevelSpec(name="extra", rank=2, alpha=2, scope="shared", inertia=0.7, lr=1e-2, targets=("q_proj", "v_proj")),
        LevelSpec(name="agent", rank=2, alpha=4, scope="agent", inertia=0.5, lr=2e-2),
        LevelSpec(name="wide", rank=1, alpha=2, scope="agent", inertia=0.5, lr=2e-2, targets=("k_proj", "o_proj")),
    )
    hive = Hive(make_model(len(tokenizer)), tokenizer, StackSpec(levels=levels), seed=0)
    hive.add_agents([f"a{i}" for i in range(2)])  # q, v: 6 one-slot + 2·2 per-row columns; k, o: 4 + 2·3 — both 10
    randomize_b(hive, scale=0.2)
    cap = CapturedForward(hive.core, 4, 12, logits_to_keep=0)
    for i, agents in enumerate([["a0", "a1", "a1", "a0"], ["a1"] * 4]):
        ids = _ids(len(tokenizer), "cpu", i)
        torch.testing.assert_close(cap(ids, agents), _eager(hive, ids, agents, keep=0), rtol=1e-4, atol=5e-5)


def test_it_sees_learning_and_added_agents(tokenizer):
    hive = _hive(tokenizer)
    cap = CapturedForward(hive.core, 4, 12)
    ids = _ids(len(tokenizer), "cpu", 0)
    before = cap(ids, MIXES[2])
    hive.learn({"a1": [("Sports: the team won", " Sports")]}, steps=2)
    after = cap(ids, MIXES[2])
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, _eager(hive, ids, MIXES[2]), rtol=1e-4, atol=5e-5)
    hive.add_agents([f"b{i}" for i in range(5)])  # the banks grow: new storage
    agents = ["b4", "a1", "b0", "a3"]
    torch.testing.assert_close(cap(ids, agents), _eager(hive, ids, agents), rtol=1e-4, atol=5e-5)


def test_bad_input_is_named(tokenizer):
    hive = _hive(tokenizer)
    cap = CapturedForward(hive.core, 4, 12)
    with pytest.raises(ValueError, match=r"input_ids must be \(4, 12\)"):
        cap(torch.zeros(4, 11, dtype=torch.long), MIXES[0])
    with pytest.raises(ValueError, match="one agent per row"):
        cap(torch.zeros(4, 12, dtype=torch.long), ["a0"])
    with pytest.raises(ValueError, match="unknown agents: zed"):
        cap(torch.zeros(4, 12, dtype=torch.long), ["a0", "a0", "a0", "zed"])
    with pytest.raises(ValueError, match="rows and tokens must be"):
        CapturedForward(hive.core, 0, 12)
    with pytest.raises(ValueError, match="needs the model on a CUDA device"):
        CapturedForward(hive.core, 4, 12, graph=True)


@pytest.mark.gpu
@requires_cuda
def test_the_replayed_graph_equals_the_eager_forward_whatever_changes_between_calls(tokenizer):
    hive = _hive(tokenizer, "cuda", random_b=False)  # shared levels zero: the eager path skips them, the graph runs them
    cap = CapturedForward(hive.core, 4, 12)
    assert cap.graph
    for i, agents in enumerate(MIXES):  # recorded with one agent on every row, replayed with two, four, one, four
        ids = _ids(len(tokenizer), "cuda", i)
        torch.testing.assert_close(cap(ids, agents), _eager(hive, ids, agents), rtol=1e-4, atol=5e-5)
    assert cap.captures == 1
    randomize_b(hive, scale=0.2)  # every level learned something, in place
    hive.learn({"a2": [("Sports: the team won", " Sports")]}, steps=1)
    ids = _ids(len(tokenizer), "cuda", 9)
    torch.testing.assert_close(cap(ids, MIXES[4]), _eager(hive, ids, MIXES[4]), rtol=1e-4, atol=5e-5)
    assert cap.captures == 1  # the same graph: it reads the banks where they are
    hive.add_agents(["b0", "b1", "b2", "b3", "b4"])
    agents = ["b4", "a1", "b0", "a3"]
    torch.testing.assert_close(cap(ids, agents), _eager(hive, ids, agents), rtol=1e-4, atol=5e-5)
    assert cap.captures == 2  # recorded again: the banks moved


def _merged_weights(hive: Hive) -> dict[str, torch.Tensor]:
    return {name: layer.merged[1] for name, layer in hive.core.layers.items() if layer.merged is not None}


def test_merged_shared_levels_give_the_live_logits_and_follow_learning_in_the_same_storage(tokenizer):
    hive = _hive(tokenizer)
    cap = CapturedForward(hive.core, 4, 12, logits_to_keep=0, merged=True)
    ids = _ids(len(tokenizer), "cpu", 3)
    torch.testing.assert_close(cap(ids, MIXES[2]), _eager(hive, ids, MIXES[2], keep=0), rtol=1e-4, atol=5e-5)
    first = _merged_weights(hive)
    assert first, "the shared levels were not merged"
    ptrs = {name: w.data_ptr() for name, w in first.items()}
    before = {name: w.clone() for name, w in first.items()}
    randomize_b(hive, seed=5, scale=0.2)  # every shared level changes in place
    torch.testing.assert_close(cap(ids, MIXES[4]), _eager(hive, ids, MIXES[4], keep=0), rtol=1e-4, atol=5e-5)
    again = _merged_weights(hive)
    assert {name: w.data_ptr() for name, w in again.items()} == ptrs  # rebuilt where a recorded graph reads them
    assert all(not torch.equal(before[name], again[name]) for name in ptrs)


@pytest.mark.gpu
@requires_cuda
def test_a_graph_over_merged_shared_levels_sees_them_change_without_being_recorded_again(tokenizer):
    hive = _hive(tokenizer, "cuda")
    cap = CapturedForward(hive.core, 4, 12, merged=True)
    for i, agents in enumerate(MIXES):
        ids = _ids(len(tokenizer), "cuda", i)
        torch.testing.assert_close(cap(ids, agents), _eager(hive, ids, agents), rtol=1e-4, atol=5e-5)
    randomize_b(hive, seed=7, scale=0.2)  # the shared levels (and the rest) change in place
    ids = _ids(len(tokenizer), "cuda", 9)
    torch.testing.assert_close(cap(ids, MIXES[4]), _eager(hive, ids, MIXES[4]), rtol=1e-4, atol=5e-5)
    assert cap.captures == 1


def test_the_pooled_levels_are_kept_apart_from_the_banks_and_rebuilt_in_place_after_learning(tokenizer):
    hive = _hive(tokenizer)
    ids = _ids(len(tokenizer), "cpu", 4)
    _eager(hive, ids, MIXES[2])
    assert all(layer.pooled is None for layer in hive.core.layers.values())  # the ordinary routing keeps nothing
    cap = CapturedForward(hive.core, 4, 12)
    cap(ids, MIXES[2])
    kept = {name: layer.pooled for name, layer in hive.core.layers.items()}
    assert all(k is not None and k.weights[0] is not None for k in kept.values())  # every module pools its levels
    banks = {w.untyped_storage().data_ptr() for layer in hive.core.layers.values() for b in layer.banks.values() for w in (b.A, b.B)}
    ptrs = {name: tuple(t.data_ptr() for t in k.weights if t is not None) for name, k in kept.items()}
    assert not banks & {p for ps in ptrs.values() for p in ps}
    hive.learn({"a1": [("Sports: the team won", " Sports")]}, steps=2)
    torch.testing.assert_close(cap(ids, MIXES[2]), _eager(hive, ids, MIXES[2]), rtol=1e-4, atol=5e-5)
    assert {name: tuple(t.data_ptr() for t in layer.pooled.weights if t is not None) for name, layer in hive.core.layers.items()} == ptrs
