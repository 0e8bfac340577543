"""The hot path reads nothing back from the device (issue: no host synchronisation).

On the CPU the reading points are instrumented: every way a tensor's value reaches the
host (``item``, ``tolist``, ``bool``/``float``/``int``, ``cpu``, ``numpy``) is counted while a
route, a learning step or a proposal runs, by the file that asked. On a GPU the same code
runs under ``torch.cuda.set_sync_debug_mode("warn")``, which warns at every synchronising
call (host-to-device copies from pageable memory included), and the warnings are sorted by
the file they come from. lorahive's own code must add none; transformers' SDPA mask helper
(``_ignore_causal_mask_sdpa``) checks the padding mask on the host twice per forward, which
is outside this project and is reported, not asserted.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from conftest import make_model, small_stack
from lorahive import Hive

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")
EXAMPLES = {
    "ann": [("Ticket: my screen is black. Team:", " hardware"), ("Ticket: refund. Team:", " billing")],
    "bob": [("Ticket: charged twice. Team:", " billing")],
}


@contextmanager
def count_reads() -> Iterator[Counter]:
    """Count host reads of tensor values inside the block (the CPU stand-in for device syncs)."""
    seen: Counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name, fn):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if f"{os.sep}lorahive{os.sep}" in caller:
                seen[name] += 1
            return fn(self, *args, **kwargs)

        return read

    for name, fn in originals.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    try:
        yield seen
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def _warm_hive(tokenizer, device: str = "cpu") -> Hive:
    hive = Hive(make_model(len(tokenizer)).to(device), tokenizer, small_stack())
    hive.add_agents(["ann", "bob"])
    hive.learn(EXAMPLES)  # allocates optimizer state and caches: the steady state is what counts
    return hive


def test_counter_sees_a_read_in_lorahive_code(tokenizer):
    from lorahive.mechanisms.aggregation import global_norm

    with count_reads() as seen:
        global_norm({"x": torch.ones(3)})
    assert seen["tolist"] == 1


def test_route_reads_nothing(tokenizer):
    hive = _warm_hive(tokenizer)
    with count_reads() as seen:
        hive.core.route(["ann", "bob", "ann"], training=["agent"])
        hive.core.route(["bob"], levels=["swarm", "agent"])
    assert sum(seen.values()) == 0, dict(seen)


def test_learning_steps_read_nothing(tokenizer):
    hive = _warm_hive(tokenizer)
    with count_reads() as seen:
        losses = hive.learn_async(EXAMPLES, steps=3)
        hive.reset_slots("context", ["ann", "bob"])
        hive.apply_update("swarm", {k: torch.zeros_like(p[0]) for k, p in hive.core.level_params("swarm").items()})
    assert sum(seen.values()) == 0, dict(seen)
    assert set(losses) == {"ann", "bob"} and all(torch.isfinite(v) for v in losses.values())


def test_a_proposal_reads_only_its_losses_once(tokenizer):
    hive = _warm_hive(tokenizer)
    with count_reads() as seen:
        grads, losses = hive.propose(EXAMPLES, "swarm")
    assert dict(seen) == {"tolist": 1}, dict(seen)
    assert set(grads) == {"ann", "bob"} and set(losses) == {"ann", "bob"}


def test_a_non_finite_step_moves_nothing_without_a_read(tokenizer):
    hive = _warm_hive(tokenizer)
    before = {k: p.detach().clone() for k, p in hive.core.level_params("agent").items()}
    bad = {"ann": [("Ticket: x. Team:", " hardware")]}
    with torch.no_grad():
        for bank in hive.core.banks("agent"):
            bank.A[0].fill_(float("nan"))  # ann's slot: its loss becomes NaN
    nan_a = {k: p.detach().clone() for k, p in hive.core.level_params("agent").items()}
    with count_reads() as seen:
        losses = hive.learn_async(bad, levels=["agent"])
    assert sum(seen.values()) == 0
    assert torch.isnan(losses["ann"])
    for k, p in hive.core.level_params("agent").items():
        assert torch.equal(p.detach().nan_to_num(), nan_a[k].nan_to_num())
        if k.endswith(".B"):
            assert torch.equal(p.detach(), before[k])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_route_and_learning_steps_never_synchronise(tokenizer):
    hive = _warm_hive(tokenizer, "cuda")
    hive.learn_async(EXAMPLES, steps=2)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            hive.core.route(["ann", "bob"], training=["agent", "context"])
            hive.learn_async(EXAMPLES, steps=2)
            hive.reset_slots("context", ["ann", "bob"])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [(w.filename, w.lineno) for w in caught if "synchroniz" in str(w.message)]
    ours = [s for s in syncs if f"{os.sep}lorahive{os.sep}" in s[0]]
    print(f"synchronising calls: {len(syncs)} in all, {len(ours)} from lorahive: {sorted(set(syncs))}")
    assert not ours, ours
