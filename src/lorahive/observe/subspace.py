"""What a group of levels adds to the weights, ΔW, and how two such changes overlap.

A training stage writes only its own levels (runtime/stages.py), so its change of module m
is exactly ``ΔW_m = Σ_l α_l·(a_l/r_l)·B_l·A_l`` over its levels, kept as factors ``U (out, k)``,
``V (k, in)``. From the factors: the stage's norm ``‖ΔW‖_F = sqrt(Σ_m tr(UᵀU·VVᵀ))`` (its
influence budget), and between two stages the principal angles of their ΔW subspaces
(Björck & Golub 1973: the cosines are the singular values of ``Q₁ᵀQ₂`` for orthonormal bases
Q of the two column spaces — the output directions each stage writes; the row spaces, the
input directions each stage reads, likewise) and the cosine of the two ΔW as flat vectors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from lorahive.core import HiveCore

__all__ = ["Factors", "delta_factors", "delta_norm", "overlap", "pairwise_overlap", "principal_cosines", "span"]

#: Module path -> (U (out, k), V (k, in)) with ΔW = U·V, float64 on the CPU.
Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def delta_factors(core: HiveCore, levels: Sequence[str], agent: str, device: torch.device | str | None = "cpu") -> Factors:
    """The ΔW that ``levels`` add to ``agent``'s view, per module, as float64 factors (mix and scale folded into U).

    On ``device`` (``None``: where the banks are, so nothing is copied to the host).
    """
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for lv in levels:
        slot = core.slot_of(lv, agent)
        coef = core.states[lv].mix * core.stack.get(lv).scale
        for path, bank in core.named_banks(lv):
            b, a = bank.B[slot].detach().double(), bank.A[slot].detach().double()
            parts.setdefault(path, []).append(((b if device is None else b.to(device)) * coef, a if device is None else a.to(device)))
    return {p: (torch.cat([u for u, _ in fs], 1), torch.cat([v for _, v in fs], 0)) for p, fs in parts.items()}


def delta_norm(factors: Factors) -> float:
    """‖ΔW‖_F over every module: sqrt(Σ_m tr((UᵀU)(VVᵀ))), without forming ΔW; one read-back wherever the factors are."""
    if not factors:
        return 0.0
    total = float(torch.stack([torch.trace((u.T @ u) @ (v @ v.T)) for u, v in factors.values()]).sum())
    return math.sqrt(max(total, 0.0))


def span(u: torch.Tensor, v: torch.Tensor, side: str, rtol: float = 1e-6) -> torch.Tensor:
    """An orthonormal basis (d, k') of ΔW = U·V's column space (``side="out"``) or row space (``"in"``).

    Directions with singular value below ``rtol`` × the largest are dropped, so a zero or
    rank-deficient ΔW has the basis of what it really spans (possibly empty).
    """
    q_u, r_u = torch.linalg.qr(u)  # (out, k), (k, k)
    q_v, r_v = torch.linalg.qr(v.T)  # (in, k), (k, k)
    left, s, right_h = torch.linalg.svd(r_u @ r_v.T)  # (k, k), (k,), (k, k)
    keep = s > rtol * float(s.max()) if s.numel() and float(s.max()) > 0 else torch.zeros_like(s, dtype=torch.bool)
    return (q_u @ left[:, keep]) if side == "out" else (q_v @ right_h.T[:, keep])


def principal_cosines(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between span(q1) and span(q2), largest first (min(k1, k2),)."""
    if q1.shape[1] == 0 or q2.shape[1] == 0:
        return torch.zeros(0, dtype=q1.dtype)
    return torch.linalg.svdvals(q1.T @ q2).clamp(0.0, 1.0)


def overlap(a: Factors, b: Factors) -> dict[str, float | int]:
    """How two changes overlap, over the modules both write.

    ``out_overlap``/``in_overlap``: mean over modules of the mean squared cosine of the
    principal angles (1: one subspace holds the other, 0: orthogonal); ``out_min_angle``/
    ``in_min_angle``: mean over modules of the smallest principal angle, in degrees;
    ``cosine``: ⟨ΔW_a, ΔW_b⟩_F / (‖ΔW_a‖·‖ΔW_b‖), signed (negative: the changes oppose);
    ``modules``: how many modules both write.
    """
    common = sorted(set(a) & set(b))
    out: dict[str, float | int] = {"modules": len(common)}
    for side in ("out", "in"):
        sq, angle, n = 0.0, 0.0, 0
        for p in common:
            cos = principal_cosines(span(*a[p], side), span(*b[p], side))
            if cos.numel():
                sq += float(cos.square().mean())
                angle += math.degrees(math.acos(float(cos[0])))
                n += 1
        out[f"{side}_overlap"] = sq / n if n else 0.0
        out[f"{side}_min_angle"] = angle / n if n else 90.0
    dot = sum(float(torch.trace((a[p][0].T @ b[p][0]) @ (b[p][1] @ a[p][1].T))) for p in common)
    na, nb = delta_norm(a), delta_norm(b)
    out["cosine"] = dot / (na * nb) if na > 0 and nb > 0 else 0.0
    return out


def pairwise_overlap(factors: Mapping[str, Factors]) -> dict[str, dict[str, float | int]]:
    """:func:`overlap` of every pair of named changes, keyed ``"a|b"`` in the mapping's order."""
    names = list(factors)
    return {f"{x}|{y}": overlap(factors[x], factors[y]) for i, x in enumerate(names) for y in names[i + 1 :]}
