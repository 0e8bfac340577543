"""The re-factoring behind ``HiveCore.add_delta``: best rank-r factors, signed so that rounding cannot flip them."""

from __future__ import annotations

import torch

from lorahive.core import refactor


def test_the_factors_are_the_truncated_svd_of_the_product():
    torch.manual_seed(0)
    left, right = torch.randn(16, 4), torch.randn(4, 12)

    b, a, dropped = refactor(left, right, 2)

    u, s, vh = torch.linalg.svd(left @ right)
    torch.testing.assert_close(b @ a, (u[:, :2] * s[:2]) @ vh[:2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dropped, s[2:].square().sum().sqrt())


def test_a_pattern_added_to_a_rest_of_rounding_gets_the_same_factors_whatever_the_rounding():
    """After a migration moved all of a slot, what is left is rounding; the next pattern added there must not take its
    signs from it (the QR meets the rounding columns first): two rests of other rounding give the same factors."""
    g = torch.Generator().manual_seed(0)
    pattern, rows = torch.randn(5, 32, 2, generator=g), torch.randn(5, 2, 24, generator=g)  # 5 slots: (out, k), (k, in)
    rests = [(1e-8 * torch.randn(5, 32, 2, generator=g), 1e-4 * torch.randn(5, 2, 24, generator=g)) for _ in range(2)]

    (b, a, _), (b2, a2, _) = (refactor(torch.cat([rb, pattern], 2), torch.cat([ra, rows], 1), 2) for rb, ra in rests)

    torch.testing.assert_close(b2, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(a2, a, rtol=0, atol=1e-5)
