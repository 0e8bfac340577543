"""Row-sparse gradients of multi-slot banks (``MemorySpec.slot_grads``): rows only for the slots a step's rows used.

A bank of a per-agent level holds every agent's slot, a learn step trains a few of them, and a
gradient shaped like the bank is 4 bytes per parameter of every slot (at 4,096 agents of
Qwen2.5-0.5B, ~100 GB for a step of 64). Under ``slot_grads`` the fused backward
(adapters/fused_train.py) gives such a bank a sparse COO gradient instead, as
``nn.Embedding(sparse=True)`` does: indices the distinct slots the rows used, values their rows
``(U, r, in)`` / ``(U, out, r)``. Each row is summed in the same order, from the same products,
as the dense ``zeros_like(bank).index_add_`` sums it, so its bits are the dense gradient's.

Passes of whole agents (``rows_per_pass``) add theirs up: autograd's accumulation of two sparse
gradients concatenates (or merges) their rows, and the optimizer, which reads them through
:func:`~lorahive.learning.optim.SlotAdamW.step`, adds duplicates up when it compacts them to
the step's slots.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lorahive.tensors import to_device

__all__ = ["SlotRows", "slot_rows", "sparse_grad"]


@dataclass(frozen=True)
class SlotRows:
    """The distinct slots of a level's rows under one routing, and each row's place among them."""

    index: torch.Tensor  # (U,) long, sorted distinct slots, on the banks' device
    inverse: torch.Tensor  # (B,) long, row i's place in ``index``
    own: int  # the first ``own`` of ``index`` are the bank's slots; the rest are rows of Routing.extra, read and never trained


def slot_rows(host: Sequence[int] | None, slots: torch.Tensor, size: int) -> SlotRows:
    """The :class:`SlotRows` of rows on ``slots`` (a device tensor) of a bank of ``size`` slots.

    ``host`` is the same slots on the host, when the routing has them (the hive's always does);
    without it the distinct slots are found on the device, which reads it.
    """
    if host is None:
        index, inverse = torch.unique(slots, sorted=True, return_inverse=True)
        return SlotRows(index, inverse, int((index < size).sum()))
    distinct = sorted(set(host))
    at = {s: i for i, s in enumerate(distinct)}
    index = to_device(torch.tensor(distinct, dtype=torch.long), slots.device)
    inverse = to_device(torch.tensor([at[s] for s in host], dtype=torch.long), slots.device)
    return SlotRows(index, inverse, bisect.bisect_left(distinct, size))


def sparse_grad(rows: SlotRows, weight: torch.Tensor, part: torch.Tensor, scale: float) -> torch.Tensor:
    """The gradient of ``weight`` (a bank's ``A`` or ``B``) with ``scale · part[i]`` added at row i's slot, sparse over the used slots.

    ``part`` is ``(B, …)``, one row per routed row, in ``weight``'s dtype; the values are summed
    as ``zeros_like(weight).index_add_(0, slots, part, alpha=scale)`` sums them, row by row.
    """
    values = torch.zeros(rows.index.shape[0], *part.shape[1:], dtype=part.dtype, device=part.device)  # (U, …)
    values.index_add_(0, rows.inverse, part, alpha=scale)
    index = rows.index
    if rows.own < index.shape[0]:  # rows of appended extra slots: not the bank's
        index, values = index[: rows.own], values[: rows.own]
    return torch.sparse_coo_tensor(index.unsqueeze(0), values, weight.shape, is_coalesced=True, check_invariants=False)
