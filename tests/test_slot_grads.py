"""Row-sparse gradients (``MemorySpec.slot_grads``): a learn step's gradient holds the step's slots only.

The option must change where the gradient's bytes live and nothing else: after steps on
overlapping agent sets, in passes, with pinned rows, with the moments resident or on the host,
the weights and moments are those of the dense-gradient path, bit for bit (on the CPU).
"""

from __future__ import annotations

import pytest
import torch

from conftest import make_model, randomize_b, small_stack
from lorahive import Hive, StackSpec
from lorahive.config import MemorySpec
from lorahive.core import RowPins, footprint
from lorahive.learning import SlotAdamW
from lorahive.learning.step_grads import StepGrads
from test_memory import NAMES, assert_same_state, examples, exercise, make_hive

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYOUTS = {"resident": MemorySpec(), "host": MemorySpec(host_moments=True, store_init=False)}


def stack() -> StackSpec:
    """The small stack with per-agent coefficients that round when they scale a gradient (alpha / r = 1.5 and 2.5)."""
    alphas = {"agent": 3.0, "context": 5.0}
    return StackSpec(levels=tuple(lv.model_copy(update={"alpha": alphas.get(lv.name, lv.alpha)}) for lv in small_stack().levels))


def twins(tokenizer, layout: str) -> tuple[Hive, Hive]:
    """The same hive with dense and with row-sparse gradients, B randomised so every factor gets a gradient."""
    out = []
    for on in (False, True):
        hive = Hive(make_model(len(tokenizer)), tokenizer, stack(), seed=0, memory=LAYOUTS[layout].model_copy(update={"slot_grads": on}))
        hive.add_agents(NAMES)
        randomize_b(hive)
        out.append(hive)
    return out[0], out[1]


def record_grads(hive: Hive, level: str) -> list[tuple[bool, int]]:
    """(sparse, rows) of one bank's A gradient each time a pass accumulates into it."""
    seen: list[tuple[bool, int]] = []
    bank = next(iter(hive.core.banks(level)))
    bank.A.register_post_accumulate_grad_hook(lambda p: seen.append((p.grad.is_sparse, p.grad._values().shape[0] if p.grad.is_sparse else p.grad.shape[0])))
    return seen


# ---------------------------------------------------------------------------- the optimizer
def sparse_rows(dense: torch.Tensor, rows: list[int], split_at: int) -> torch.Tensor:
    """``dense``'s ``rows`` as a sparse gradient, uncoalesced as two accumulated passes leave it (the first ``split_at`` rows, then the rest)."""
    parts = [torch.sparse_coo_tensor(torch.tensor([r]), dense[r], dense.shape, is_coalesced=True, check_invariants=False) for r in (rows[:split_at], rows[split_at:])]
    return parts[0] + parts[1]


@pytest.mark.parametrize("host", [False, True])
def test_sparse_gradients_update_exactly_as_dense_ones(host):
    shapes = {"q.A": (24, 3, 5), "q.B": (24, 7, 3)}
    gen = torch.Generator().manual_seed(0)
    init = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    dense, sparse = (({k: torch.nn.Parameter(v.clone()) for k, v in init.items()}, SlotAdamW(lr=0.1, weight_decay=0.01, host=host)) for _ in range(2))
    steps = [list(range(24)), [1, 3, 5], list(range(0, 24, 2)), [0, 1, 2, 3, 7, 8, 9, 20], list(range(24)), [5, 2, 23]]  # whole, runs, > MAX_RUNS runs (gathered), mixed step counts
    for i, slots in enumerate(steps):
        grads = {k: torch.randn(s, generator=torch.Generator().manual_seed(10 + i)) for k, s in shapes.items()}
        touched = sorted(set(slots) - {slots[0]}) + [s for s in (4, 11) if s not in slots]  # a step slot without rows, rows outside the step
        for k in shapes:
            kept = torch.zeros_like(grads[k])
            kept[touched] = grads[k][touched]
            dense[0][k].grad = kept
            sparse[0][k].grad = sparse_rows(grads[k], touched, len(touched) // 2)
        for params, opt in (dense, sparse):
            opt.step(params, slots)
    for k in shapes:
        assert torch.equal(dense[0][k], sparse[0][k]), k
        for m in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(dense[1].moment(k, m), sparse[1].moment(k, m)), (k, m)


def test_a_sparse_gradient_compacts_to_the_steps_slots_with_duplicates_added():
    dense = torch.randn(10, 2, 3, generator=torch.Generator().manual_seed(1))
    grad = sparse_rows(dense, [2, 7, 9], 2) + sparse_rows(dense, [7, 3], 1)  # slot 7 twice, slot 9 outside the step
    g, compacted = StepGrads([2, 3, 5, 7]).of(grad)
    assert compacted and g.shape == (4, 2, 3)
    assert torch.equal(g, torch.stack([dense[2], dense[3], torch.zeros(2, 3), dense[7] + dense[7]]))


# ---------------------------------------------------------------------------- a hive
@pytest.mark.parametrize("layout", ["resident", "host"])
def test_a_hive_with_slot_grads_learns_what_a_dense_one_does(tokenizer, layout):
    dense, sparse = twins(tokenizer, layout)
    seen = record_grads(sparse, "agent")
    exercise(dense)
    exercise(sparse)
    assert_same_state(dense, sparse)
    assert seen[:2] == [(True, 3), (True, 3)]  # the first learn call, 2 steps of 3 agents: rows for those only


@pytest.mark.parametrize("layout", ["resident", "host"])
def test_passes_add_sparse_gradients_as_dense_ones(tokenizer, layout):
    dense, sparse = twins(tokenizer, layout)
    seen = record_grads(sparse, "agent")
    for agents in (["ann", "bob", "cyd"], ["bob", "dee", "eve"], NAMES):
        for hive in (dense, sparse):
            hive.learn_async(examples(agents), steps=2, rows_per_pass=2)  # each agent has 2 rows: one agent per pass
    assert_same_state(dense, sparse)
    assert seen[:3] == [(True, 1), (True, 2), (True, 3)]  # pass by pass, one agent's rows more each


@pytest.mark.parametrize("layout", ["resident", "host"])
def test_pinned_rows_leave_the_same_update_with_slot_grads(tokenizer, layout):
    dense, sparse = twins(tokenizer, layout)
    ex = examples(["ann", "bob", "cyd"])
    gen = torch.Generator().manual_seed(3)
    modes = {path: (torch.randn(2, *b.A.shape[1:], generator=gen) * 0.3, torch.randn(2, *b.B.shape[1:], generator=gen) * 0.3) for path, b in dense.core.named_banks("context")}
    pins = {("ann", *ex["ann"][0]): 1, ("bob", *ex["bob"][0]): 0, ("bob", *ex["bob"][1]): 1}  # every row of bob's: its own slot gets none
    for hive in (dense, sparse):
        hive.core.pins = RowPins("context", modes, pins)
        hive.learn_async(ex, steps=2, rows_per_pass=4)
        hive.core.pins = None
        hive.learn(examples(["bob", "dee"]), steps=1)
    assert_same_state(dense, sparse)


def test_learn_and_propose_gives_the_same_proposals_and_step_with_slot_grads(tokenizer):
    dense, sparse = twins(tokenizer, "resident")
    ex = examples(["ann", "cyd", "eve"])
    got = [hive.learn_and_propose(ex, "swarm", levels=["agent", "context"], rows_per_pass=2) for hive in (dense, sparse)]
    for agent, grads in got[0][1].items():
        for k, g in grads.items():
            assert torch.equal(g, got[1][1][agent][k]), (agent, k)
    assert_same_state(dense, sparse)


def test_the_step_peak_holds_the_steps_slots_only(tokenizer):
    agents = [f"a{i}" for i in range(8)]
    dense, sparse = (make_hive(tokenizer, MemorySpec(slot_grads=on), agents) for on in (False, True))
    got = {k: footprint(h.core, step_slots=2) for k, h in (("dense", dense), ("sparse", sparse))}
    assert got["dense"].gradient == got["dense"].weights  # a gradient shaped like every trained bank
    assert got["sparse"].gradient == got["sparse"].weights * 2 * 2 // 8  # 2 slots' rows, held twice (sparse, and compacted)
    assert footprint(sparse.core).gradient == 2 * got["sparse"].weights  # a step of every slot: twice the dense gradient
