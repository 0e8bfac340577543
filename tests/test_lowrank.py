"""The re-factoring behind ``HiveCore.add_delta``: best rank-r factors, signed so that rounding cannot flip them."""

from __future__ import annotations

import torch

from lorahive.core.lowrank import balanced, refactor


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


def test_balanced_keeps_the_product_and_puts_each_a_row_at_its_init_norm():
    g = torch.Generator().manual_seed(1)
    b, a, _ = refactor(torch.randn(3, 16, 2, generator=g) * 1e-2, torch.randn(3, 2, 12, generator=g) * 1e-2, 4)  # rank 2 in rank 4: two zero components
    a0 = torch.randn(3, 4, 12, generator=g)
    nb, na = balanced(b, a, a0)
    torch.testing.assert_close(nb @ na, b @ a, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(na[:, :2].norm(dim=-1), a0[:, :2].norm(dim=-1))  # the live components at the init's scale
    assert torch.equal(na[:, 2:], a0[:, 2:]) and not nb[:, :, 2:].any()  # the zero ones: init row back, B still zero
    assert (torch.sign((na[:, :2] * a[:, :2]).sum(-1)) > 0).all()  # same direction, not flipped


def test_a_small_pattern_written_by_add_delta_fades_under_decay_instead_of_growing(tokenizer):
    """Decay toward init shrinks B and moves A toward A0; with A rows far below the init's scale (an even split of a
    small singular value) B·A0 would outgrow the pattern (issue 13's experiment 5 at full size: the slot's ΔW norm 8× its
    start). Written by add_delta, the term's norm only falls."""
    from conftest import make_model, small_stack
    from lorahive import Hive

    hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    hive.add_agents(["ann"])
    core = hive.core
    slot = core.slot_of("agent", "ann")
    g = torch.Generator().manual_seed(2)
    delta = {p: (torch.randn(bank.out_features, 1, generator=g) * 1e-3, torch.randn(1, bank.in_features, generator=g) * 1e-3) for p, bank in core.named_banks("agent")}
    core.add_delta("agent", slot, delta)
    scale = core.stack.get("agent").scale

    def norm() -> float:
        return sum(float((scale * bank.B[slot] @ bank.A[slot]).norm().square()) for bank in core.banks("agent")) ** 0.5

    written = norm()
    torch.testing.assert_close(written, sum(float((u @ v).norm().square()) for u, v in delta.values()) ** 0.5, rtol=1e-4, atol=0)
    seen = [written]
    for _ in range(40):
        core.decay_toward_init("agent", [slot], 0.05)
        seen.append(norm())
    assert all(later <= earlier * (1 + 1e-6) for earlier, later in zip(seen, seen[1:], strict=False)) and seen[-1] < 0.2 * written
