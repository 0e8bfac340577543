"""What mechanisms gather over the ranks of a run (mechanisms/peers.py), with the other rank played by a list."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from conftest import small_stack
from lorahive import Hive
from lorahive.mechanisms.peers import ALONE, add_up, gather_rows, held, written


class _Rank:
    """Rank ``rank`` of two: slot s is hosted by rank s mod 2; a gather returns ``other`` in the other rank's place."""

    def __init__(self, rank: int, other: Any) -> None:
        self.rank, self.other = rank, other
        self.sent: list[Any] = []

    def hosts(self, slot: int) -> bool:
        return slot % 2 == self.rank

    def gather(self, obj: Any) -> list[Any]:
        self.sent.append(obj)
        return [obj, self.other] if self.rank == 0 else [self.other, obj]


@pytest.fixture
def core(tokenizer, tiny_model):
    hive = Hive(tiny_model, tokenizer, small_stack())
    hive.add_agents(["a0", "a1", "a2", "a3"])
    return hive.core


def test_rows_of_both_ranks_come_back_in_slot_order(core):
    rank1 = _Rank(1, ([0, 2], {"x": torch.tensor([[0.0], [2.0]])}))

    slots, rows = gather_rows(rank1, core, "agent", [1, 3], {"x": torch.tensor([[1.0], [3.0]])})

    assert slots == [0, 1, 2, 3] and rows["x"].flatten().tolist() == [0.0, 1.0, 2.0, 3.0]


def test_a_shared_slot_is_held_by_every_rank_and_needs_no_gather(core):
    rank1 = _Rank(1, None)

    assert held(rank1, core, "swarm", [0]) == [0] and held(rank1, core, "agent", [0, 1, 2, 3]) == [1, 3]
    slots, rows = gather_rows(rank1, core, "swarm", [0], {"x": torch.ones(1, 2)})
    assert slots == [0] and rows["x"].tolist() == [[1.0, 1.0]] and not rank1.sent


def test_written_slots_are_the_union_of_what_each_rank_holds(core):
    core.mark_written("agent", [0, 1, 2])  # this rank holds 0 and 2; slot 1 is the other rank's
    rank0 = _Rank(0, {"agent": [3]})

    assert written(rank0, core, ["agent", "swarm"]) == {"agent": [0, 2, 3], "swarm": []}
    assert rank0.sent == [{"agent": [0, 2]}]  # one gather, of the per-agent level only, of its own slots


def test_sums_are_added_in_rank_order_and_a_rank_without_any_adds_nothing(core):
    mine = {"agent": (torch.tensor([[1.0]]), torch.tensor([2.0]))}

    both = add_up(_Rank(0, {"agent": (torch.tensor([[3.0]]), torch.tensor([1.0]))}), mine)
    assert both is not None and both["agent"][0].item() == 4.0 and both["agent"][1].item() == 3.0
    assert add_up(_Rank(0, None), mine) == mine and add_up(_Rank(1, None), None) is None


def test_alone_every_helper_hands_back_what_it_is_given(core):
    rows = {"x": torch.arange(4.0)[:, None]}
    core.mark_written("agent", [1, 2])

    assert gather_rows(ALONE, core, "agent", [0, 1, 2, 3], rows)[1]["x"] is rows["x"]
    assert written(ALONE, core, ["agent"]) == {"agent": [1, 2]}
