"""CapturedDecode (core/captured_decode.py): greedy decoding over a static KV cache, each step one graph replay.

On the CPU the same steps run eagerly and must give ``generate``'s greedy tokens under the hive's own routing,
for left-padded prompts and any mix of agents, call after call and after learning; on CUDA the replayed steps
must give the eager steps' tokens, with one recording until the banks move.
"""

from __future__ import annotations

import pytest
import torch

from conftest import make_model, randomize_b, small_stack
from lorahive import Hive
from lorahive.adapters import Routing
from lorahive.core import CapturedDecode

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
MIXES = [["a0"] * 4, ["a0", "a1", "a2", "a3"], ["a3", "a3", "a1", "a1"], ["a2", "a0", "a3", "a1"]]
ROWS, PROMPT, NEW = 4, 10, 6


def _hive(tokenizer, device: str = "cpu") -> Hive:
    hive = Hive(make_model(len(tokenizer)).to(device), tokenizer, small_stack(), seed=0)
    hive.add_agents([f"a{i}" for i in range(4)])
    randomize_b(hive, scale=0.2)
    return hive


def _prompts(vocab: int, device: str, seed: int, rows: int = ROWS, prompt: int = PROMPT) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (rows, prompt), generator=gen)
    mask = torch.ones(rows, prompt, dtype=torch.long)
    mask[0, :3] = 0  # left padding on two rows
    mask[2, :1] = 0
    return ids.to(device), mask.to(device)


def _generate(hive: Hive, ids: torch.Tensor, mask: torch.Tensor, agents: list[str]) -> torch.Tensor:
    with torch.no_grad(), hive.core.routing.use(hive.core.route(agents)):
        out = hive.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0)
    return out[:, PROMPT:]


class _CpuGraph:
    """A CUDA graph's semantics on the CPU: recording runs nothing, each replay runs the recorded step into one output."""

    def __init__(self, fn, out: torch.Tensor) -> None:
        self.fn, self.out = fn, out

    def replay(self) -> None:
        self.out.copy_(self.fn())


def _record_on_cpu(fn):
    """``record``'s stand-in: its two warm-up runs do run (and step the cache), its capture runs nothing."""
    for _ in range(2):
        out = fn()
    graph = _CpuGraph(fn, torch.empty_like(out))
    return graph, graph.out


@pytest.mark.parametrize("merged", [False, True])
def test_the_eager_steps_give_generates_tokens_for_any_agents_and_after_learning(tokenizer, merged):
    hive = _hive(tokenizer)
    dec = CapturedDecode(hive.core, ROWS, PROMPT, NEW, merged=merged)
    assert not dec.graph
    for i, agents in enumerate(MIXES):
        ids, mask = _prompts(len(tokenizer), "cpu", i)
        assert torch.equal(dec(ids, agents, mask), _generate(hive, ids, mask, agents))
    before = dec(ids, MIXES[1], mask)
    hive.learn({"a1": [("Sports: the team won", " Sports")], "a2": [("World: the summit met", " World")]}, steps=3)
    after = dec(ids, MIXES[1], mask)
    assert torch.equal(after, _generate(hive, ids, mask, MIXES[1]))
    assert not torch.equal(before, after)


def test_without_levels_it_decodes_as_the_bare_model(tokenizer):
    """``levels=False``: the limit R3 is read against (forward.py) — the bare model's greedy tokens, the hive's differ."""
    hive = _hive(tokenizer)
    bare = CapturedDecode(hive.core, ROWS, PROMPT, NEW, levels=False)
    ids, mask = _prompts(len(tokenizer), "cpu", 0)
    with torch.no_grad(), hive.core.routing.use(Routing(active=frozenset())):
        want = hive.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0)[:, PROMPT:]
    assert torch.equal(bare(ids, MIXES[1], mask), want)
    assert not torch.equal(want, _generate(hive, ids, mask, MIXES[1]))


@pytest.mark.parametrize(("rows", "prompt", "new", "padded"), [(ROWS, PROMPT, NEW, True), (64, 64, 32, False)])  # the second: forward.py's R3 captured
def test_the_graph_paths_steps_give_the_eager_tokens_on_the_cpu(tokenizer, monkeypatch, rows, prompt, new, padded):
    """``StaticLayer.update`` writes at its own counter, not at ``cache_position``, and record()'s warm-up steps advance it too."""
    monkeypatch.setattr("lorahive.core.captured_decode.record", _record_on_cpu)
    hive = _hive(tokenizer)
    dec = CapturedDecode(hive.core, rows, prompt, new)
    dec.graph = True  # the graph path, each replay run eagerly
    eager = CapturedDecode(hive.core, rows, prompt, new)
    for i in range(2):  # the recording call, then one of replays alone
        ids, mask = _prompts(len(tokenizer), "cpu", i, rows, prompt)
        agents = [f"a{(j + i) % 4}" for j in range(rows)]
        given = mask if padded else None  # forward.py passes none
        assert torch.equal(dec(ids, agents, given), eager(ids, agents, given))
    assert dec.captures == 1


def test_bad_input_is_named(tokenizer):
    hive = _hive(tokenizer)
    dec = CapturedDecode(hive.core, ROWS, PROMPT, NEW)
    ids, mask = _prompts(len(tokenizer), "cpu", 0)
    with pytest.raises(ValueError, match=r"input_ids must be \(4, 10\)"):
        dec(ids[:, 1:], MIXES[0])
    with pytest.raises(ValueError, match="one agent per row"):
        dec(ids, ["a0"])
    with pytest.raises(ValueError, match=r"attention_mask must be \(4, 10\)"):
        dec(ids, MIXES[0], mask[:2])
    with pytest.raises(ValueError, match="unknown agents: zed"):
        dec(ids, ["a0", "a0", "a0", "zed"])
    with pytest.raises(ValueError, match="new_tokens must be ≥ 1"):
        CapturedDecode(hive.core, ROWS, PROMPT, 0)
    with pytest.raises(ValueError, match="needs the model on a CUDA device"):
        CapturedDecode(hive.core, ROWS, PROMPT, NEW, graph=True)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("merged", [False, True])
def test_the_replayed_steps_give_the_eager_tokens_whatever_changes_between_calls(tokenizer, merged):
    hive = _hive(tokenizer, "cuda")
    dec = CapturedDecode(hive.core, ROWS, PROMPT, NEW, merged=merged)
    eager = CapturedDecode(hive.core, ROWS, PROMPT, NEW, graph=False, merged=merged)
    assert dec.graph
    for i, agents in enumerate(MIXES):
        ids, mask = _prompts(len(tokenizer), "cuda", i)
        assert torch.equal(dec(ids, agents, mask), eager(ids, agents, mask))
    assert dec.captures == 1
    hive.learn({"a1": [("Sports: the team won", " Sports")]}, steps=3)
    assert torch.equal(dec(ids, MIXES[1], mask), eager(ids, MIXES[1], mask))
    assert dec.captures == 1  # the same graph: it reads the banks, and the host refreshed the kept weights
    hive.add_agents(["b0", "b1", "b2", "b3", "b4"])
    agents = ["b4", "a1", "b0", "a3"]
    assert torch.equal(dec(ids, agents, mask), eager(ids, agents, mask))
    assert dec.captures == 2  # recorded again: the banks moved
