"""Pattern activity: how strongly each rank-1 component of a level slot fires on its rows.

While an :class:`ActivityProbe` is set on the routing state (:meth:`RoutingState.probing`),
every wrapped layer reports its input to it. For row ``b`` routed to slot ``s`` of level
``l``, pattern ``i`` (the ``i``-th rank-1 component ``B[s][:, i] · A[s][i, :]``) contributes
``mix_l · (a_l/r_l) · ‖B[s][:, i]‖ · |A[s][i, :] · x_bt|`` at token ``t``; its *activity* on the
row is that magnitude averaged over the row's real tokens, relative to the mean ``‖x_bt‖``
(a gain, so the scale of hidden states does not matter), and averaged over modules. The
probe sums activities and row counts per slot on the device; nothing is read back until
:meth:`ActivityProbe.result`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["ActivityProbe", "mean_activity"]

#: Per level: per-slot sums ``(S, r)`` of pattern activity and row-module observations ``(S,)``.
Totals = dict[str, tuple[torch.Tensor, torch.Tensor]]


def add_totals(a: Mapping[str, tuple[torch.Tensor, torch.Tensor]], b: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> Totals:
    """Two sets of rows' totals (per level: sums, row counts) added up, level by level."""
    out = dict(a)
    for level, (sums, rows) in b.items():
        out[level] = (out[level][0] + sums, out[level][1] + rows) if level in out else (sums, rows)
    return out


def mean_activity(totals: Totals) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per level: mean activity ``(S, r)`` (0 where no row) and whether each slot had rows ``(S,)``."""
    return {level: (s / rows.clamp_min(1.0)[:, None], rows > 0) for level, (s, rows) in totals.items()}


class ActivityProbe:
    """Accumulates per-slot, per-pattern activity of ``levels`` over one forward pass."""

    def __init__(self, levels: Sequence[str], mask: torch.Tensor, keep_inputs: int = 0) -> None:
        self.levels = frozenset(levels)
        self.mask = mask.float()  # (B, T): 1 on real tokens
        self.sums: dict[str, torch.Tensor] = {}  # level -> (S, r)
        self.rows: dict[str, torch.Tensor] = {}  # level -> (S,): row-module observations
        self.keep_inputs = keep_inputs
        self.inputs: dict[str, torch.Tensor] = {}  # module path -> (≤ keep_inputs, in): rows' mean input
        self._rows: dict[torch.device, tuple[torch.Tensor, ...]] = {}  # device -> what every module's fold shares (see _row_terms)
        self._x: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # the last module input, its fp32 copy and token norm

    def _row_terms(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Mask ``(B, T)``, its ``(B, T, 1)`` view, real tokens per row ``(B,)``, slot-0 index and ones ``(B,)``: made once per pass, not per module."""
        if device not in self._rows:
            m = self.mask.to(device)
            n = m.shape[0]
            self._rows[device] = (m, m[..., None], m.sum(1).clamp_min(1.0), torch.zeros(n, dtype=torch.long, device=device), torch.ones(n, dtype=torch.float32, device=device))
        return self._rows[device]

    def _input_terms(self, x: torch.Tensor, m: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` in fp32 and its mean token norm ``(B,)``; the levels of one module share one input, so once per module."""
        if self._x is None or self._x[0] is not x:
            xf = x.float()
            self._x = (x, xf, (xf.norm(dim=-1) * m).sum(1) / tokens)
        return self._x[1], self._x[2]

    @torch.no_grad()
    def take_input(self, path: str, x: torch.Tensor) -> None:
        """Keep the first ``keep_inputs`` rows' mean input (over real tokens) of module ``path``, once per pass."""
        if not self.keep_inputs or path in self.inputs or x.dim() != 3 or x.shape[:2] != self.mask.shape:
            return
        m = self.mask[: self.keep_inputs].to(x.device)
        self.inputs[path] = (x[: self.keep_inputs].float() * m[..., None]).sum(1) / m.sum(1).clamp_min(1.0)[:, None]

    @torch.no_grad()
    def observe(self, level: str, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, slots: torch.Tensor | None, gain: float, size: int | None = None) -> None:
        """Fold one module's input ``x (B, T, in)`` for ``level``'s bank ``a (S, r, in)``, ``b (S, out, r)``.

        ``size``: the bank's own slots when ``a, b`` carry extra slots after them (``Routing.extra``):
        rows on those count for no slot.
        """
        if x.dim() != 3 or x.shape[:2] != self.mask.shape:
            return  # not the probed batch (e.g. a cached decode step)
        n = a.shape[0] if size is None else size
        m, m3, tokens, zero, ones = self._row_terms(x.device)  # tokens (B,): real tokens per row
        xf, xnorm = self._input_terms(x, m, tokens)  # xnorm (B,)
        if slots is None:  # a shared level: every row uses slot 0
            idx = zero
            h = xf @ a[0].float().t()  # (B, T, r)
            bnorm = b[0].float().norm(dim=0).expand(x.shape[0], -1)  # (B, r)
        else:
            idx = slots
            h = torch.einsum("bti,bri->btr", xf, a.float()[idx])  # (B, T, r)
            bnorm = b.float().norm(dim=1)[idx]  # (B, r)
        fire = (h.abs() * m3).sum(1) / tokens[:, None]  # (B, r)
        act = gain * bnorm * fire / xnorm.clamp_min(1e-12)[:, None]
        if n < a.shape[0]:  # rows on extra slots: weight 0, folded into slot 0 (no read of the device)
            own = (idx < n).float()
            act, ones, idx = act * own[:, None], ones * own, torch.where(idx < n, idx, torch.zeros_like(idx))
        if level not in self.sums:
            self.sums[level] = torch.zeros(n, a.shape[1], device=x.device)
            self.rows[level] = torch.zeros(n, device=x.device)
        self.sums[level].index_add_(0, idx, act)
        self.rows[level].index_add_(0, idx, ones)

    def totals(self) -> Totals:
        """Per level: the sums and row counts so far (what several processes' probes add up)."""
        return {level: (s, self.rows[level]) for level, s in self.sums.items()}

    def result(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per level: mean activity ``(S, r)`` (0 where no row) and whether each slot had rows ``(S,)``."""
        return mean_activity(self.totals())
