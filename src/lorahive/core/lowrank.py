"""Best rank-r factors of a product of factors: the math behind ``HiveCore.add_delta``.

``M = L·R`` with ``L (out, m)`` and ``R (m, in)``, m small. With ``L = Q_l·R_l`` and
``Rᵀ = Q_r·R_r`` (thin QR), ``M = Q_l·(R_l·R_rᵀ)·Q_rᵀ``, so the SVD of the m×m core gives
the SVD of M without ever forming it (Eckart–Young: keeping the top r singular values is
the best rank-r approximation in Frobenius norm).
"""

from __future__ import annotations

import torch

__all__ = ["balanced", "refactor"]


def _signs(cols: torch.Tensor) -> torch.Tensor:
    """``(…, 1, k)`` signs that give each column a positive dot product with a fixed probe vector.

    A singular vector is defined up to its sign, and which sign an SVD returns can flip under
    a rounding-sized change of its input (a pattern moved out of a slot leaves a rest of
    rounding noise, whose directions feed the QR). Fixing the sign by the vector itself makes
    the factors a continuous function of ``M``: runs that differ by rounding (one process or
    several, another device) get the same factors, and the same gradients after them. The
    probe is a golden-ratio (Weyl) sequence, so no structured vector — a first Adam step is
    ±lr in every entry — is orthogonal to it; "largest entry positive" ties on such vectors.
    """
    probe = torch.arange(cols.shape[-2], device=cols.device, dtype=cols.dtype) * 0.6180339887498949 % 1.0 - 0.5  # (out,)
    dots = (probe[:, None] * cols).sum(-2, keepdim=True)  # (…, 1, k)
    return torch.where(dots < 0, -1.0, 1.0).to(cols.dtype)


def refactor(left: torch.Tensor, right: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B (…, out, r), A (…, r, in), dropped (…))``: the best rank-``rank`` factors of ``left @ right``.

    Batched over any leading dimensions (one QR and one SVD call for a whole batch of
    modules). The singular values are split evenly between the factors (``B = U·√S``,
    ``A = √S·Vᵀ``), each column of ``U`` signed by a fixed probe (:func:`_signs`); ``dropped`` is the Frobenius norm of the part that did not fit. When
    ``left @ right`` has rank below ``rank`` the extra directions get zero weight.
    """
    q_l, r_l = torch.linalg.qr(left)  # (…, out, m), (…, m, m)
    q_r, r_r = torch.linalg.qr(right.mT)  # (…, in, m), (…, m, m)
    u, s, vh = torch.linalg.svd(r_l @ r_r.mT)  # (…, m, m), (…, m), (…, m, m)
    k = min(rank, s.shape[-1])
    root = s[..., :k].sqrt()
    cols = q_l @ u[..., :k]  # (…, out, k): M's left singular vectors
    sign = _signs(cols)  # (…, 1, k)
    b = cols * (sign * root[..., None, :])  # (…, out, k)
    a = (sign.mT * root[..., :, None]) * (vh[..., :k, :] @ q_r.mT)  # (…, k, in)
    if k < rank:  # pad with zero directions to the level's rank
        b = torch.cat([b, b.new_zeros(*b.shape[:-1], rank - k)], dim=-1)
        a = torch.cat([a, a.new_zeros(*a.shape[:-2], rank - k, a.shape[-1])], dim=-2)
    return b, a, s[..., k:].square().sum(-1).sqrt()


def balanced(b: torch.Tensor, a: torch.Tensor, a0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same product ``b @ a`` with each rank-1 component's ``A`` row at the norm of its init row ``a0``.

    A pattern learned from init keeps its ``A`` rows near the init's scale and grows ``B``; an
    even split (``√S`` on each side) of a small singular value leaves the ``A`` row far below
    it. Decay toward the init snapshot (``B`` shrinks, ``A`` moves toward ``A0``) then *adds*
    ``B``·``A0`` — a random input direction of the init's size — faster than it shrinks the
    pattern, so the term grows instead of fading; and every optimizer step, about the same
    size in every entry, turns a small row far more than a row at the init's scale. Rescaling
    each component by a positive factor (``a_i ·= c_i``, ``b_i /= c_i``) keeps the product,
    the signs and the subspaces; a component that is zero gets its init row back (``B`` stays
    zero), so it can learn again, as a reset slot does.
    """
    na = a.norm(dim=-1)  # (…, r)
    n0 = a0.norm(dim=-1).clamp_min(1e-12)
    live = na > 0
    scale = torch.where(live, n0 / na.clamp_min(1e-30), torch.ones_like(na))
    return b / scale[..., None, :], torch.where(live[..., None], a * scale[..., :, None], a0)
