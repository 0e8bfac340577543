"""adapters/dense.py: every slot's per-row levels as one masked product equal the rows' own gathered levels."""

from __future__ import annotations

import torch

from lorahive.adapters.dense import dense_weights, row_scale


def test_the_masked_product_over_every_slot_equals_each_rows_own_levels():
    gen = torch.Generator().manual_seed(0)
    a_one, b_one = torch.randn(3, 5, generator=gen), torch.randn(7, 3, generator=gen)  # one-slot: rank 3, in 5, out 7
    pool_a, pool_b = torch.randn(4, 2, 5, generator=gen), torch.randn(4, 7, 2, generator=gen)  # 4 slots of rank 2
    slots = torch.tensor([2, 0, 2, 3])
    x = torch.randn(4, 6, 5, generator=gen)  # (rows, tokens, in)
    a_all, b_all, col, coeff = dense_weights(a_one, b_one, 0.5, pool_a, pool_b, 2.0)
    assert a_all.shape == (3 + 8, 5) and b_all.shape == (3 + 8, 7) and col.tolist() == [-1, -1, -1, 0, 0, 1, 1, 2, 2, 3, 3]
    scale = row_scale(col, coeff, slots)
    assert scale[0].tolist() == [0.5] * 3 + [0, 0, 0, 0, 2, 2, 0, 0]  # row 0 runs slot 2 and the one-slot levels
    got = ((x @ a_all.t()) * scale.unsqueeze(1)) @ b_all
    want = 0.5 * (x @ a_one.t() @ b_one.t()) + 2.0 * torch.bmm(torch.bmm(x, pool_a[slots].transpose(1, 2)), pool_b[slots].transpose(1, 2))
    torch.testing.assert_close(got, want)


def test_without_one_slot_levels_only_the_rows_slots_run():
    pool_a, pool_b = torch.ones(2, 1, 3), torch.ones(2, 4, 1)
    _, _, col, coeff = dense_weights(None, None, 1.0, pool_a, pool_b, 1.0)
    assert row_scale(col, coeff, torch.tensor([1, 1, 0])).tolist() == [[0, 1], [0, 1], [1, 0]]
