"""Best rank-r factors of a product of factors: the math behind ``HiveCore.add_delta``.

``M = L·R`` with ``L (out, m)`` and ``R (m, in)``, m small. With ``L = Q_l·R_l`` and
``Rᵀ = Q_r·R_r`` (thin QR), ``M = Q_l·(R_l·R_rᵀ)·Q_rᵀ``, so the SVD of the m×m core gives
the SVD of M without ever forming it (Eckart–Young: keeping the top r singular values is
the best rank-r approximation in Frobenius norm).
"""

from __future__ import annotations

import torch

__all__ = ["refactor"]


def refactor(left: torch.Tensor, right: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B (…, out, r), A (…, r, in), dropped (…))``: the best rank-``rank`` factors of ``left @ right``.

    Batched over any leading dimensions (one QR and one SVD call for a whole batch of
    modules). The singular values are split evenly between the factors (``B = U·√S``,
    ``A = √S·Vᵀ``); ``dropped`` is the Frobenius norm of the part that did not fit. When
    ``left @ right`` has rank below ``rank`` the extra directions get zero weight.
    """
    q_l, r_l = torch.linalg.qr(left)  # (…, out, m), (…, m, m)
    q_r, r_r = torch.linalg.qr(right.mT)  # (…, in, m), (…, m, m)
    u, s, vh = torch.linalg.svd(r_l @ r_r.mT)  # (…, m, m), (…, m), (…, m, m)
    k = min(rank, s.shape[-1])
    root = s[..., :k].sqrt()
    b = (q_l @ u[..., :k]) * root[..., None, :]  # (…, out, k)
    a = root[..., :, None] * (vh[..., :k, :] @ q_r.mT)  # (…, k, in)
    if k < rank:  # pad with zero directions to the level's rank
        b = torch.cat([b, b.new_zeros(*b.shape[:-1], rank - k)], dim=-1)
        a = torch.cat([a, a.new_zeros(*a.shape[:-2], rank - k, a.shape[-1])], dim=-2)
    return b, a, s[..., k:].square().sum(-1).sqrt()
