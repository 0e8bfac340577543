"""The fused path under autograd (adapters/fused.py): one autograd node per module, its backward written out.

``fused_forward`` is what :class:`~lorahive.adapters.layer.HiveLinear` calls on the fused path:
with a gradient to record it runs :class:`_FusedLoRA`, else the prepared weights of
adapters/fused.py. The backward hands each level's bank a gradient shaped like the bank, or,
under ``MemorySpec.slot_grads``, a sparse one over the slots the rows used (adapters/slot_rows.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import torch

from lorahive.adapters.fused import (
    Term,
    apply,
    common_coeff,
    one_weights,
    prepared,
    row_weights,
    split_terms,
)
from lorahive.adapters.routing import Routing
from lorahive.adapters.slot_rows import sparse_grad

if TYPE_CHECKING:
    from lorahive.adapters.layer import HiveLinear

__all__ = ["fused_forward"]


def fused_forward(layer: HiveLinear, x: torch.Tensor, y: torch.Tensor, routing: Routing) -> torch.Tensor:
    """The levels' contribution added to the base output ``y`` in one shrink and one expand per kind."""
    if torch.is_grad_enabled() and not any(g.requires_grad for g in routing.gates.values()):
        one, rows = split_terms(layer, routing, train=True)
        if not one and not rows:
            return y
        weights = [w for t in (*one, *rows) for w in t.inputs()]
        return cast(torch.Tensor, _FusedLoRA.apply(x, y, (one, rows), *weights))
    return apply(prepared(layer, routing, x.dtype), x, y)


class _FusedLoRA(torch.autograd.Function):
    """The fused forward as one autograd node, with its backward written out.

    Under autograd the forward would record ~25 nodes per module (gathers, casts,
    concatenations, coefficient products) and the backward would replay each. Here the
    forward prepares the weights without autograd (casts written straight into the
    activation dtype) and the backward computes, per kind, the four products of a LoRA
    backward and hands each level its share of the rank: its slot rows added into a zero
    gradient shaped like its bank, as the gather's own backward would.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, terms: tuple[list[Term], list[Term]], *weights: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        one, rows = terms
        a_one, b_one, alpha_one = one_weights(one, x.dtype) if one else (None, None, 1.0)
        a_rows, b_rows, alpha_rows = row_weights(rows, x.dtype) if rows else (None, None, 1.0)
        x3 = x.unsqueeze(1) if x.dim() == 2 else x  # (B, T, in)
        out = y.unsqueeze(1) if y.dim() == 2 else y  # (B, T, out)
        h_one = h_rows = None
        if a_one is not None and b_one is not None:
            h_one = (x3 @ a_one.t()).view(-1, a_one.shape[0])  # (N, R_s)
            out = torch.addmm(out.reshape(-1, out.shape[-1]), h_one, b_one.t(), alpha=alpha_one).view(out.shape)
        if a_rows is not None and b_rows is not None:
            h_rows = torch.bmm(x3, a_rows.transpose(1, 2))  # (B, T, R_r)
            b = b_rows.transpose(1, 2)
            out = out.baddbmm_(h_rows, b, alpha=alpha_rows) if h_one is not None else torch.baddbmm(out, h_rows, b, alpha=alpha_rows)
        ctx.terms, ctx.alphas, ctx.x_shape = terms, (alpha_one, alpha_rows), x.shape
        ctx.save_for_backward(x3, a_one, b_one, h_one, a_rows, b_rows, h_rows)
        return out.view(y.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x3, a_one, b_one, h_one, a_rows, b_rows, h_rows = ctx.saved_tensors
        one, rows = ctx.terms
        alpha_one, alpha_rows = ctx.alphas
        g3 = (grad.unsqueeze(1) if grad.dim() == 2 else grad).contiguous()  # (B, T, out)
        need_x, first_rows = ctx.needs_input_grad[0], 3 + 2 * len(one)
        gx: torch.Tensor | None = None  # (B, T, in)
        wgrads: list[torch.Tensor | None] = []
        if one:
            gf, xf = g3.view(-1, g3.shape[-1]), x3.reshape(-1, x3.shape[-1])  # (N, out), (N, in)
            dh = gf @ b_one  # (N, R_s), coefficients of b_one included, alpha not
            if need_x:
                gx = _scaled(dh @ a_one, alpha_one).view(x3.shape)
            wgrads += _bank_grads(one, ctx.needs_input_grad[3:first_rows], lambda: dh.t() @ xf, lambda: gf.t() @ h_one, alpha_one, rowwise=False)
        if rows:
            dh_r = torch.bmm(g3, b_rows)  # (B, T, R_r)
            if need_x:
                gx = _scaled(torch.bmm(dh_r, a_rows), alpha_rows) if gx is None else gx.baddbmm_(dh_r, a_rows, alpha=alpha_rows)
            d_a, d_b = lambda: torch.bmm(dh_r.transpose(1, 2), x3), lambda: torch.bmm(g3.transpose(1, 2), h_rows)
            wgrads += _bank_grads(rows, ctx.needs_input_grad[first_rows:], d_a, d_b, alpha_rows, rowwise=True)
        dx = gx.view(ctx.x_shape) if gx is not None else None
        return (dx, grad if ctx.needs_input_grad[1] else None, None, *wgrads)


def _scaled(t: torch.Tensor, alpha: float) -> torch.Tensor:
    return t if alpha == 1.0 else t.mul_(alpha)


def _bank_grads(terms: list[Term], needs: tuple[bool, ...], d_a: Callable[[], torch.Tensor], d_b: Callable[[], torch.Tensor], alpha: float, rowwise: bool) -> list[torch.Tensor | None]:
    """Each term's (grad A, grad B), from the concatenated ``d_a`` (…, R, in) and ``d_b`` (…, out, R).

    ``d_a`` carries the coefficients that sit in the expand weights and lacks ``alpha``;
    ``d_b`` carries neither, so each level's share is scaled by its own coefficient.
    """
    shared = common_coeff(terms)
    da = d_a() if any(needs[0::2]) else None
    db = d_b() if any(needs[1::2]) else None
    out: list[torch.Tensor | None] = []
    at = 0
    for i, t in enumerate(terms):
        r = t.bank.rank
        wa, wb = t.inputs()
        ga = gb = None
        if da is not None and needs[2 * i]:
            ga = _to_bank(t, wa, da[..., at : at + r, :], alpha, rowwise)
        if db is not None and needs[2 * i + 1]:
            part = db[..., at : at + r]
            if t.gate is not None:  # per-row coefficient
                gb = _to_bank(t, wb, part * (t.coeff * t.gate.to(part.dtype)).view(-1, 1, 1), 1.0, rowwise)
            else:
                gb = _to_bank(t, wb, part, alpha if shared is not None else t.coeff, rowwise)
        out += [ga, gb]
        at += r
    return out


def _to_bank(t: Term, weight: torch.Tensor, part: torch.Tensor, scale: float, rowwise: bool) -> torch.Tensor:
    """A zero gradient shaped like the bank with ``scale · part`` added at the term's slot(s); under ``slot_grads``
    the same rows, summed the same way, as a sparse gradient over the slots used (adapters/slot_rows.py)."""
    part = part.to(weight.dtype)
    if not rowwise:
        part = part.unsqueeze(0)  # (1, …)
        if weight.shape[0] == 1:
            return part if scale == 1.0 else part * scale
    if t.rows is not None:
        return sparse_grad(t.rows, weight, part, scale)
    slots = t.slots if t.slots is not None else torch.zeros(1, dtype=torch.long, device=weight.device)
    return torch.zeros_like(weight).index_add_(0, slots, part, alpha=scale)
