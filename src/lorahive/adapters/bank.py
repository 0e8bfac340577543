"""Adapter banks: the LoRA weights of one level in one wrapped Linear, one slot per row owner."""

from __future__ import annotations

import math
import zlib

import torch
from torch import nn

from lorahive.tensors import to_device


def _init_a(n: int, rank: int, in_features: int, seed_key: str) -> torch.Tensor:
    """Kaiming-uniform(a=√5) init, as PEFT's LoRA A, reproducible from a text key."""
    gen = torch.Generator().manual_seed(zlib.crc32(seed_key.encode()))
    bound = 1.0 / math.sqrt(in_features)
    return (torch.rand(n, rank, in_features, generator=gen) * 2.0 - 1.0) * bound


class LevelBank(nn.Module):
    """``A[slots, r, in]`` and ``B[slots, out, r]`` plus their init snapshot (decay pulls to it).

    ``B`` starts at zero, so a fresh bank adds exactly nothing to the base layer; its init
    snapshot is that zero, so only ``A0`` is stored.
    """

    A0: torch.Tensor

    def __init__(self, n_slots: int, rank: int, in_features: int, out_features: int, key: str) -> None:
        super().__init__()
        self.rank, self.in_features, self.out_features, self.key = rank, in_features, out_features, key
        a = _init_a(n_slots, rank, in_features, f"{key}/0")
        self.A = nn.Parameter(a)  # (S, r, in)
        self.B = nn.Parameter(torch.zeros(n_slots, out_features, rank))  # (S, out, r)
        self.register_buffer("A0", a.clone(), persistent=False)

    @property
    def B0(self) -> torch.Tensor:
        """The init snapshot of ``B``: zeros, made on demand rather than stored."""
        return torch.zeros_like(self.B.detach())

    @property
    def n_slots(self) -> int:
        return self.A.shape[0]

    @torch.no_grad()
    def grow(self, n_slots: int) -> None:
        """Extend to ``n_slots`` slots; new slots get a fresh A and B = 0."""
        old = self.n_slots
        if n_slots <= old:
            return
        dev, dt = self.A.device, self.A.dtype
        a_new = _init_a(n_slots - old, self.rank, self.in_features, f"{self.key}/{old}").to(dev, dt)
        b_new = torch.zeros(n_slots - old, self.out_features, self.rank, device=dev, dtype=dt)
        self.A = nn.Parameter(torch.cat([self.A.data, a_new]), requires_grad=self.A.requires_grad)
        self.B = nn.Parameter(torch.cat([self.B.data, b_new]), requires_grad=self.B.requires_grad)
        self.A0 = torch.cat([self.A0, a_new.clone()])

    @torch.no_grad()
    def reset(self, slots: torch.Tensor) -> None:
        """Put the given slots back to their init snapshot."""
        self.A.index_copy_(0, slots, self.A0.index_select(0, slots))
        self.B.index_fill_(0, slots, 0.0)

    def delta(self, x: torch.Tensor, slots: torch.Tensor | None, host: tuple[int, ...] | None = None) -> torch.Tensor:
        """``B[s(row)] · A[s(row)] · x`` for each row; ``slots=None`` means slot 0 for all rows."""
        return routed_delta(x, self.A, self.B, slots, host)


def routed_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, slots: torch.Tensor | None, host: tuple[int, ...] | None = None) -> torch.Tensor:
    """Reference LoRA product with per-row slots: ``a (S, r, in)``, ``b (S, out, r)``.

    ``host`` is the same slots as a host tuple, when the caller knows them: rows are then
    grouped by slot when that saves gathers (:func:`_grouped_delta`), without reading the device.
    """
    a, b = a.to(x.dtype), b.to(x.dtype)
    if slots is None:
        return (x @ a[0].transpose(0, 1)) @ b[0].transpose(0, 1)
    squeeze = x.dim() == 2
    if squeeze:  # (B, in) -> (B, 1, in)
        x = x.unsqueeze(1)
    if host is not None and 2 * len(set(host)) <= len(host):
        out = _grouped_delta(x, a, b, host)
    else:
        h = torch.bmm(x, a[slots].transpose(1, 2))  # (B, T, r)
        out = torch.bmm(h, b[slots].transpose(1, 2))  # (B, T, out)
    return out.squeeze(1) if squeeze else out


def _grouped_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, ids: tuple[int, ...]) -> torch.Tensor:
    """The per-row product with rows grouped by slot: two matmuls per distinct slot, no per-row copies.

    Scoring repeats each prompt once per label option (hundreds of rows, a handful of agents);
    gathering every row's ``A`` and ``B`` would copy the banks hundreds of times per module.
    """
    distinct = sorted(set(ids))
    rows = [[i for i, s in enumerate(ids) if s == d] for d in distinct]
    parts = []
    for d, r in zip(distinct, rows, strict=True):
        xs = x[r[0] : r[-1] + 1] if r[-1] - r[0] + 1 == len(r) else x[r]  # (n, T, in)
        parts.append((xs @ a[d].t()) @ b[d].t())  # (n, T, out)
    order = [i for r in rows for i in r]
    out = torch.cat(parts)
    if order == list(range(len(ids))):
        return out
    inverse = [0] * len(order)
    for pos, i in enumerate(order):
        inverse[i] = pos
    return out.index_select(0, to_device(torch.tensor(inverse), out.device))
