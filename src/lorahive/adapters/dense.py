"""Per-row levels of a small fleet as one dense product over every slot, masked per row.

Gathering each row's ``(R, in)`` and ``(out, R)`` weights and running batched matmuls of rank
``R`` (adapters/fused.py) costs two gathers and two small-batch kernels per module. While the
slots times their rank are few (``DENSE_COLUMNS``), it is cheaper to run every slot at once:

    y += ((x · A_allᵀ) ⊙ m) · B_all,    A_all (C, in), B_all (C, out), m (rows, C)

where ``A_all`` stacks the one-slot levels' rows and then every slot's per-row rows, and
``m`` holds each column's coefficient on the rows that use it (one-slot columns on every row,
a slot's columns on that slot's rows, 0 elsewhere). Two matmuls and one multiply per module,
the mask made once per forward for all modules of the same layout. The sum is the same as the
gathered one's (other rounding: every product is computed, the masked ones multiplied by 0).
Used for forwards without autograd over weights kept between calls (``Routing.pooled``).
"""

from __future__ import annotations

import torch

__all__ = ["DENSE_COLUMNS", "dense_weights", "row_scale"]

#: Most per-row columns (slots × the per-row levels' ranks) run densely; beyond, rows gather their weights.
DENSE_COLUMNS = 256


def dense_weights(
    a_one: torch.Tensor | None, b_one: torch.Tensor | None, alpha_one: float, pool_a: torch.Tensor, pool_b: torch.Tensor, alpha_rows: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``A_all (C, in)``, ``B_all (C, out)``, each column's slot (−1: every row) and coefficient.

    ``a_one (R_s, in)`` / ``b_one (out, R_s)`` are the one-slot levels (or None), ``pool_a (S, R, in)`` /
    ``pool_b (S, out, R)`` the per-row levels of every slot, all in the activation dtype.
    """
    slots, rank = pool_a.shape[0], pool_a.shape[1]
    a = [pool_a.reshape(slots * rank, -1)]
    b = [pool_b.transpose(1, 2).reshape(slots * rank, -1)]
    col = [torch.arange(slots, device=pool_a.device).repeat_interleave(rank)]
    coeff = [torch.full((slots * rank,), alpha_rows, device=pool_a.device)]
    if a_one is not None and b_one is not None:
        a.insert(0, a_one)
        b.insert(0, b_one.t())
        col.insert(0, torch.full((a_one.shape[0],), -1, dtype=torch.long, device=pool_a.device))
        coeff.insert(0, torch.full((a_one.shape[0],), alpha_one, device=pool_a.device))
    return torch.cat(a), torch.cat(b), torch.cat(col), torch.cat(coeff).to(pool_a.dtype)


def row_scale(col: torch.Tensor, coeff: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``(rows, C)``: each column's coefficient on the rows it runs for, 0 on the others."""
    runs = (col.view(1, -1) == slots.view(-1, 1)) | (col.view(1, -1) < 0)
    return runs.to(coeff.dtype) * coeff.view(1, -1)
