"""SlotAdamW against a plain per-slot AdamW, and DESIGN.md invariant 3 (unused slots untouched)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lorahive.learning import SlotAdamW, optim
from lorahive.learning.optim import slot_runs

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, requires_cuda])]
SHAPES = {"q.A": (6, 3, 5), "q.B": (6, 7, 3), "v.A": (6, 2, 5), "v.B": (6, 4, 2)}  # (slots, …)


class ReferenceAdamW:
    """The straightforward per-slot AdamW the fused one must match: gather, update, scatter."""

    def __init__(self, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.lr, self.wd, self.betas, self.eps = lr, weight_decay, betas, eps
        self.state: dict[str, dict[str, torch.Tensor]] = {}

    @torch.no_grad()
    def step(self, params: dict[str, nn.Parameter], slots: torch.Tensor) -> None:
        b1, b2 = self.betas
        idx = torch.unique(slots)
        for i, p in params.items():
            if p.grad is None:
                continue
            st = self.state.setdefault(i, {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p), "step": torch.zeros(p.shape[0], dtype=torch.long, device=p.device)})
            g = p.grad[idx]
            st["step"][idx] += 1
            t = st["step"][idx].to(p.dtype).view(-1, *([1] * (p.dim() - 1)))
            m = st["exp_avg"][idx].mul_(b1).add_(g, alpha=1 - b1)
            v = st["exp_avg_sq"][idx].mul_(b2).addcmul_(g, g, value=1 - b2)
            st["exp_avg"][idx], st["exp_avg_sq"][idx] = m, v
            w = p.data[idx] * (1 - self.lr * self.wd)
            p.data[idx] = w - self.lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + self.eps)


def make_params(device: str, seed: int = 0) -> dict[str, nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return {k: nn.Parameter(torch.randn(s, generator=gen).to(device)) for k, s in SHAPES.items()}


def set_grads(params: dict[str, nn.Parameter], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in params.values():
        p.grad = torch.randn(p.shape, generator=gen).to(p.device)


# Contiguous, scattered, single, with a duplicate, and slots whose step counts differ.
SCHEDULE = [[0, 1, 2, 3], [1, 3, 5], [4], [0, 0, 2, 5], [0, 1, 2, 3, 4, 5], [5, 2]]


def test_runs_cut_at_gaps_and_at_step_changes():
    assert slot_runs([0, 1, 2, 5, 6], [3, 3, 1, 1, 1]) == [(0, 2, 3), (2, 3, 1), (5, 7, 1)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("max_runs", [8, 1])  # 1: scattered slots take the gather / scatter path
def test_matches_reference_adamw_slot_by_slot(device, weight_decay, max_runs, monkeypatch):
    monkeypatch.setattr(optim, "MAX_RUNS", max_runs)
    ours, ref = make_params(device), make_params(device)
    opt, ref_opt = SlotAdamW(lr=1e-2, weight_decay=weight_decay), ReferenceAdamW(lr=1e-2, weight_decay=weight_decay)
    for n, used in enumerate(SCHEDULE):
        set_grads(ours, n), set_grads(ref, n)
        slots = torch.tensor(used, device=device)
        opt.step(ours, slots)
        ref_opt.step(ref, slots)
    for k in SHAPES:
        torch.testing.assert_close(ours[k].data, ref[k].data, rtol=1e-5, atol=1e-6)
        for s in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt.state[k][s], ref_opt.state[k][s], rtol=1e-4, atol=1e-6)
        assert torch.equal(opt.state[k]["step"], ref_opt.state[k]["step"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_runs", [8, 1])
def test_unused_slots_and_their_state_stay_bitwise(device, max_runs, monkeypatch):
    monkeypatch.setattr(optim, "MAX_RUNS", max_runs)
    params = make_params(device)
    opt = SlotAdamW(lr=1e-2, weight_decay=0.1)
    set_grads(params, 0)
    opt.step(params, torch.arange(6, device=device))  # every slot has state now
    before = {k: p.detach().clone() for k, p in params.items()}
    state = {k: {s: t.clone() for s, t in st.items()} for k, st in opt.state.items()}
    set_grads(params, 1)
    opt.step(params, torch.tensor([1, 4], device=device))
    for k, p in params.items():
        for s in (0, 2, 3, 5):
            assert torch.equal(p.data[s], before[k][s])
            assert all(torch.equal(opt.state[k][n][s], state[k][n][s]) for n in ("exp_avg", "exp_avg_sq", "step"))
        assert not torch.equal(p.data[1], before[k][1]) and not torch.equal(p.data[4], before[k][4])
        assert opt.state[k]["step"].tolist() == [1, 2, 1, 1, 2, 1]


def test_parameters_without_grad_are_left_alone():
    params = make_params("cpu")
    set_grads(params, 0)
    params["v.B"].grad = None
    before = params["v.B"].detach().clone()
    opt = SlotAdamW(lr=1e-2)
    opt.step(params, torch.tensor([0, 3]))
    assert torch.equal(params["v.B"].data, before) and "v.B" not in opt.state


def test_grown_bank_gets_fresh_state_for_new_slots():
    params = make_params("cpu")
    opt = SlotAdamW(lr=1e-2)
    set_grads(params, 0)
    opt.step(params, torch.tensor([0, 5]))
    grown = {k: nn.Parameter(torch.cat([p.data, torch.zeros(2, *p.shape[1:])])) for k, p in params.items()}
    set_grads(grown, 1)
    opt.step(grown, torch.tensor([5, 7]))
    assert opt.state["q.A"]["step"].tolist() == [1, 0, 0, 0, 0, 2, 0, 1]
    assert opt.state["q.A"]["exp_avg"].shape == grown["q.A"].shape


def test_state_dict_round_trip_continues_identically():
    a, b = make_params("cpu"), make_params("cpu")
    opt_a = SlotAdamW(lr=1e-2, weight_decay=0.1)
    set_grads(a, 0)
    opt_a.step(a, torch.tensor([0, 2, 3]))
    flat = opt_a.state_dict()
    assert set(flat) == {f"{k}:{s}" for k in SHAPES for s in ("exp_avg", "exp_avg_sq", "step")}
    for k, p in b.items():
        p.data.copy_(a[k].data)
    opt_b = SlotAdamW(lr=1e-2, weight_decay=0.1)
    opt_b.load_state_dict(flat)
    set_grads(a, 1), set_grads(b, 1)
    opt_a.step(a, torch.tensor([2, 4]))
    opt_b.step(b, torch.tensor([2, 4]))
    assert all(torch.equal(a[k].data, b[k].data) for k in SHAPES)


def test_a_zeroed_slot_starts_over_like_a_fresh_one():
    """SlotAdamW.reset clears a slot's moments and step count; the next step is a first step."""
    params, fresh = make_params("cpu"), make_params("cpu")
    opt, opt_fresh = SlotAdamW(lr=1e-2), SlotAdamW(lr=1e-2)
    for n in range(3):
        set_grads(params, n)
        opt.step(params, torch.tensor([1, 2]))
    opt.reset([2])
    for k, st in opt.state.items():
        assert int(st["step"][2]) == 0 and int(st["step"][1]) == 3 and not st["exp_avg"][2].any()
        params[k].data[2] = fresh[k].data[2]
    set_grads(params, 9), set_grads(fresh, 9)
    opt.step(params, torch.tensor([1, 2]))
    opt_fresh.step(fresh, torch.tensor([2]))
    assert all(torch.allclose(params[k].data[2], fresh[k].data[2], rtol=1e-6, atol=1e-7) for k in SHAPES)
