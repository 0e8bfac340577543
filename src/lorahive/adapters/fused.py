"""Fused path of :class:`HiveLinear`: every level of one module in one shrink and one expand.

The reference path (``HiveLinear.forward``) runs each level on its own: per level a cast of
the whole bank, a gather, two matmuls and a scaled add. Here the levels of one module are
concatenated along the rank, since ``Σ_l c_l·B_l·A_l·x = [c_1 B_1 … c_n B_n]·[A_1; …; A_n]·x``:

* levels whose slot is the same for every row (shared levels, or per-agent levels of a batch
  that holds one agent) go into one ``(R_s, in)`` shrink matmul and one ``(out, R_s)`` expand
  ``addmm`` into the base output;
* levels routed per row go into one batched shrink and one ``baddbmm`` expand, over
  ``(B, R_r, in)`` / ``(B, out, R_r)`` weights gathered for the batch's rows only (the bank
  is never cast or copied whole).

Forwards that pool (``Routing.pooled``, the captured forward and decoder) keep each module's
levels concatenated between calls and, while the fleet is small, run the per-row levels of every
slot as one dense product masked per row (adapters/dense.py).

Mixing coefficient, scale and per-row gate are folded into the expand weights, so no pass
over the activations is spent on them. Under autograd a module's fused forward is one node with
its backward written out (adapters/fused_train.py), so gradients land in the gathered slots
only. Under ``no_grad`` (scoring, generation with a KV cache) the
prepared weights are kept for the life of the routing, so each decode step pays four matmuls
per module and nothing else.

The path is used automatically on CUDA and on the CPU (where it took the demo's run from 180 s
to 146 s on 2 cores: one pass over the activations per module instead of several per level);
:func:`use_fused` forces it on or off (``"off"`` runs the reference path, which the test
suite checks the fused math against).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, cast

import torch

from lorahive.adapters.bank import LevelBank
from lorahive.adapters.dense import DENSE_COLUMNS, dense_weights, row_scale
from lorahive.adapters.routing import Routing
from lorahive.adapters.slot_rows import SlotRows, slot_rows

if TYPE_CHECKING:
    from lorahive.adapters.layer import HiveLinear

Mode = Literal["auto", "on", "off"]
_MODE = threading.local()


def _mode() -> Mode:
    return cast(Mode, getattr(_MODE, "value", "auto"))


@contextmanager
def use_fused(mode: Mode) -> Iterator[None]:
    """Within the block: ``"on"`` fuses on any device, ``"off"`` runs the reference, ``"auto"`` fuses on CUDA and the CPU."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"fused mode must be 'auto', 'on' or 'off', got {mode!r}")
    previous, _MODE.value = _mode(), mode
    try:
        yield
    finally:
        _MODE.value = previous


def wants_fused(x: torch.Tensor) -> bool:
    """Whether ``HiveLinear`` should take the fused path for input ``x``."""
    mode = _mode()
    return mode == "on" or (mode == "auto" and x.device.type in ("cuda", "cpu"))


@dataclass(frozen=True)
class _Weights:
    """Weights used instead of a level's bank (``Routing.overrides``), e.g. per-agent proposal slots."""

    A: torch.Tensor  # (K, r, in)
    B: torch.Tensor  # (K, out, r)
    rank: int


@dataclass(frozen=True)
class Term:
    """One level's contribution: its bank, the slots of the rows (None: one slot), the coefficient.

    For training (adapters/fused_train.py) under ``slot_grads``: ``rows``, the distinct slots the
    rows use (the bank's gradient is sparse over them), and ``leaf``, the bank that takes the
    gradient when ``bank`` is its weights joined with extra slots without autograd.
    """

    bank: LevelBank | _Weights
    slots: torch.Tensor | None  # (B,) long, (1,) when every row uses that slot, or None: slot 0
    coeff: float  # mix · alpha / r
    gate: torch.Tensor | None  # (B,) float, or None
    leaf: LevelBank | None = None
    rows: SlotRows | None = None

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The factors autograd differentiates: the leaf bank's, else those the term reads."""
        source = self.leaf if self.leaf is not None else self.bank
        return source.A, source.B


@dataclass(frozen=True)
class Prepared:
    """Concatenated weights of one module for one routing, in the activation dtype.

    ``alpha_*`` is the coefficient shared by every level of the group (applied by the
    expand's ``alpha``); where levels differ it is 1.0 and the coefficients sit in ``b_*``.
    """

    a_one: torch.Tensor | None  # (R_s, in)
    b_one: torch.Tensor | None  # (out, R_s)
    alpha_one: float
    a_rows: torch.Tensor | None  # (B, R_r, in)
    b_rows: torch.Tensor | None  # (B, out, R_r)
    alpha_rows: float
    dense: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # A_all (C, in), B_all (C, out), row scale (B, C): adapters/dense.py


@dataclass(frozen=True)
class Pool:
    """A module's levels kept between forwards (``HiveLinear.pooled``): what they were built from, and the weights.

    ``weights`` is ``(a_one, b_one, pool_a, pool_b)`` — pool_* whole banks ``(S, R_r, in)`` / ``(S, out, R_r)`` —
    or, ``dense``, ``(A_all, B_all, column slot, column coefficient)`` (adapters/dense.py).
    """

    key: tuple[object, ...]
    weights: tuple[torch.Tensor | None, ...]
    dense: bool
    alpha_one: float
    alpha_rows: float


@dataclass(frozen=True)
class _Plan:
    """Per routing, for every level that runs: (slots, coefficient, gate); shared by all modules.

    A level's entry is made the first time a module holding it asks (a level scoped to some
    modules only is absent from the others), ``seen`` lists the levels already classified.
    """

    terms: dict[str, tuple[torch.Tensor | None, float, torch.Tensor | None]]
    seen: set[str]
    rows: dict[str, SlotRows] = field(default_factory=dict)  # per level under slot_grads, made by the first module that trains it


# Plans and prepared weights live as long as their routing object (one forward pass, or one
# whole generate call): weights cannot change under a routing in use.
_PLANS: dict[int, _Plan] = {}
_CACHE: dict[int, dict[int, tuple[torch.dtype, Prepared]]] = {}
_SCALES: dict[int, dict[tuple[object, ...], torch.Tensor]] = {}  # dense row scales, shared by the modules of one routing


def _forget(key: int) -> None:
    _PLANS.pop(key, None)
    _CACHE.pop(key, None)
    _SCALES.pop(key, None)


def _classify(routing: Routing, coeffs: dict[str, float]) -> dict[str, tuple[torch.Tensor | None, float, torch.Tensor | None]]:
    """Classify levels once per routing; which row slots are shared by every row comes from ``routing.uniform``."""
    terms: dict[str, tuple[torch.Tensor | None, float, torch.Tensor | None]] = {}
    single: dict[int, torch.Tensor | None] = {}
    for level, scale in coeffs.items():
        if not routing.runs(level):
            continue
        slots, gate = routing.slots.get(level), routing.gates.get(level)
        if gate is not None and slots is None:  # gated shared level: per-row coefficient
            slots = torch.zeros(gate.shape[0], dtype=torch.long, device=gate.device)
        elif gate is None and slots is not None:
            if routing.uniform is not None:  # known on the host: no device read
                slots = slots[:1] if level in routing.uniform else slots
            else:
                if id(slots) not in single:
                    single[id(slots)] = slots[:1] if bool((slots == slots[0]).all()) else None
                slots = single[id(slots)] if single[id(slots)] is not None else slots
        terms[level] = (slots, routing.mix.get(level, 1.0) * scale, gate)
    return terms


def _plan(layer: HiveLinear, routing: Routing) -> _Plan:
    key = id(routing)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _Plan({}, set())
        weakref.finalize(routing, _forget, key)
    if not plan.seen.issuperset(layer.scales):  # this module holds a level no module before it did
        new = {lv: c for lv, c in layer.scales.items() if lv not in plan.seen}
        plan.terms.update(_classify(routing, new))
        plan.seen.update(new)
    return plan


def split_terms(layer: HiveLinear, routing: Routing, train: bool = False) -> tuple[list[Term], list[Term]]:
    """Split ``layer``'s running levels into one-slot terms and per-row terms.

    ``train``: for the training node, whose banks under ``slot_grads`` get row-sparse gradients
    (a level with extra slots then reads them joined without autograd, its bank the leaf).
    """
    one: list[Term] = []
    rows: list[Term] = []
    plan = _plan(layer, routing)
    for level, module in layer.banks.items():
        term = plan.terms.get(level)
        if term is None:
            continue
        slots, coeff, gate = term
        bank = cast(LevelBank, module)
        own = level not in routing.overrides and level not in routing.extra
        used = None
        if train and bank.slot_grads and bank.n_slots > 1 and slots is not None and level not in routing.overrides:
            used = _slot_rows(plan, routing, level, slots, bank.n_slots)
        if own:
            t = Term(bank, slots, coeff, gate, rows=used)
        elif used is not None:  # extra slots joined without autograd: the gradient goes to the bank alone, sparse
            with torch.no_grad():
                t = Term(_Weights(*routing.weights(level, layer.name, bank.A, bank.B), bank.rank), slots, coeff, gate, bank, used)
        else:
            t = Term(_Weights(*routing.weights(level, layer.name, bank.A, bank.B), bank.rank), slots, coeff, gate)
        (one if gate is None and (slots is None or slots.shape[0] == 1) else rows).append(t)
    return one, rows


def _slot_rows(plan: _Plan, routing: Routing, level: str, slots: torch.Tensor, size: int) -> SlotRows:
    """``level``'s :class:`SlotRows` under ``routing``, made once for all its modules."""
    if level not in plan.rows:
        host = routing.host_slots.get(level)
        plan.rows[level] = slot_rows(host[: slots.shape[0]] if host is not None else None, slots, size)  # a uniform level runs its first row's slot
    return plan.rows[level]


# ---------------------------------------------------------------------------- weights
def common_coeff(terms: list[Term]) -> float | None:
    """The coefficient shared by all ungated terms, else None."""
    first = terms[0].coeff
    return first if all(t.gate is None and t.coeff == first for t in terms) else None


def one_weights(terms: list[Term], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(R_s, in)``, ``(out, R_s)`` and the expand's alpha, for terms with one slot each."""
    alpha = common_coeff(terms)
    a_parts, b_parts = [], []
    for t in terms:
        a = t.bank.A[0] if t.slots is None else t.bank.A.index_select(0, t.slots)[0]  # (r, in)
        b = t.bank.B[0] if t.slots is None else t.bank.B.index_select(0, t.slots)[0]  # (out, r)
        a_parts.append(a)
        b_parts.append(b if alpha is not None else b * t.coeff)
    return _cat(a_parts, 0, dtype), _cat(b_parts, 1, dtype), 1.0 if alpha is None else alpha


def row_weights(terms: list[Term], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(B, R_r, in)``, ``(B, out, R_r)`` gathered for the batch's rows, and the expand's alpha."""
    alpha = common_coeff(terms)
    a_parts, b_parts = [], []
    for t in terms:
        assert t.slots is not None
        a_parts.append(t.bank.A.index_select(0, t.slots))  # (B, r, in)
        b = t.bank.B.index_select(0, t.slots)  # (B, out, r)
        if alpha is None:
            b = b * (t.coeff if t.gate is None else (t.coeff * t.gate.to(b.dtype)).view(-1, 1, 1))
        b_parts.append(b)
    return _cat(a_parts, 1, dtype), _cat(b_parts, 2, dtype), 1.0 if alpha is None else alpha


def _cat(parts: list[torch.Tensor], dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Concatenate and cast; without autograd in one kernel, writing straight into ``dtype``."""
    if len(parts) == 1 or (torch.is_grad_enabled() and any(p.requires_grad for p in parts)):
        return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)).to(dtype)
    shape = list(parts[0].shape)
    shape[dim] = sum(p.shape[dim] for p in parts)
    return torch.cat(parts, dim=dim, out=torch.empty(shape, dtype=dtype, device=parts[0].device))


def prepare(layer: HiveLinear, routing: Routing, dtype: torch.dtype) -> Prepared:
    """The concatenated weights of ``layer`` for ``routing`` (differentiable w.r.t. the banks)."""
    one, rows = split_terms(layer, routing)
    pool = pooled(layer, one, rows, dtype, routing) if routing.pooled else None
    if pool is not None:
        return pool
    a_one, b_one, alpha_one = one_weights(one, dtype) if one else (None, None, 1.0)
    a_rows, b_rows, alpha_rows = row_weights(rows, dtype) if rows else (None, None, 1.0)
    return Prepared(a_one, b_one, alpha_one, a_rows, b_rows, alpha_rows)


def refresh(layer: HiveLinear, routing: Routing, dtype: torch.dtype) -> tuple[int, ...]:
    """Bring ``layer``'s pooled weights for ``routing`` up to date in their own storage; their addresses (none if not pooled)."""
    one, rows = split_terms(layer, routing)
    with torch.no_grad():
        pooled(layer, one, rows, dtype, routing)
    kept = layer.pooled
    return () if kept is None else tuple(t.data_ptr() for t in kept.weights if t is not None)


def pooled(layer: HiveLinear, one: list[Term], rows: list[Term], dtype: torch.dtype, routing: Routing) -> Prepared | None:
    """``prepare`` from weights kept on ``layer`` between forwards: the levels concatenated and cast once per change.

    Applies without autograd when every per-row term reads one slot tensor from its own bank,
    ungated, and the banks have the same slots; else None. The one-slot terms are kept
    concatenated; the per-row ones as whole pooled banks ``(S, R_r, in)`` / ``(S, out, R_r)``,
    of which a forward gathers the rows' slots in one index per factor — or, while the slots
    times their rank are at most ``DENSE_COLUMNS``, all of it as one dense product masked per row
    (adapters/dense.py). A rebuild (a level changed: version counters and identities) writes
    into the kept storage, so a graph recorded over it reads the new weights (core/captured.py).
    """
    slots = rows[0].slots if rows else None
    if torch.is_grad_enabled() or not (one or rows):
        return None
    if any(not isinstance(t.bank, LevelBank) for t in (*one, *rows)) or any(t.slots is not slots or t.gate is not None for t in rows):
        return None
    if len({t.bank.A.shape[0] for t in rows}) > 1:
        return None
    dense = bool(rows) and rows[0].bank.A.shape[0] * sum(t.bank.rank for t in rows) <= DENSE_COLUMNS
    key = (dtype, dense, *((id(t.bank.A), t.bank.A._version, id(t.bank.B), t.bank.B._version, t.coeff, t.slots is None) for t in (*one, *rows)), len(one))
    kept = layer.pooled
    if kept is None or kept.key != key:
        a_one, b_one, alpha_one = one_weights(one, dtype) if one else (None, None, 1.0)
        a_rows, b_rows, alpha_rows = _pool_weights(rows, dtype) if rows else (None, None, 1.0)
        built: tuple[torch.Tensor | None, ...] = (a_one, b_one, a_rows, b_rows)
        if dense:
            assert a_rows is not None and b_rows is not None
            built = dense_weights(a_one, b_one, alpha_one, a_rows, b_rows, alpha_rows)
        banks = {w.untyped_storage().data_ptr() for t in (*one, *rows) for w in (t.bank.A, t.bank.B)}
        # kept apart from the banks (a cast to the banks' own dtype returns the bank itself)
        fresh = tuple(None if w is None else w.clone() if w.untyped_storage().data_ptr() in banks else w for w in built)
        if kept is not None and len(kept.weights) == len(fresh) and all(_fits(old, new) for old, new in zip(kept.weights, fresh, strict=True)):
            fresh = tuple(old.copy_(new) if old is not None and new is not None else None for old, new in zip(kept.weights, fresh, strict=True))
        kept = layer.pooled = Pool(key, fresh, dense, alpha_one, alpha_rows)
    if kept.dense:
        a_all, b_all, col, coeff = kept.weights
        assert a_all is not None and b_all is not None and col is not None and coeff is not None and slots is not None
        scales = _SCALES.setdefault(id(routing), {})
        layout = (id(slots), sum(t.bank.rank for t in one), sum(t.bank.rank for t in rows), col.shape[0], dtype, kept.alpha_one, kept.alpha_rows)  # the columns' split, from the host
        if layout not in scales:
            scales[layout] = row_scale(col, coeff, slots)
        return Prepared(None, None, 1.0, None, None, 1.0, dense=(a_all, b_all, scales[layout]))
    a_one, b_one, pool_a, pool_b = kept.weights
    a_rows = b_rows = None
    if pool_a is not None and pool_b is not None:
        assert slots is not None
        a_rows, b_rows = pool_a.index_select(0, slots), pool_b.index_select(0, slots)
    return Prepared(a_one, b_one, kept.alpha_one, a_rows, b_rows, kept.alpha_rows)


def _fits(old: torch.Tensor | None, new: torch.Tensor | None) -> bool:
    return (old is None) == (new is None) and (old is None or (new is not None and old.shape == new.shape and old.dtype == new.dtype))


def _pool_weights(terms: list[Term], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Whole banks ``(S, R_r, in)``, ``(S, out, R_r)`` concatenated along the rank, coefficients in B where they differ."""
    alpha = common_coeff(terms)
    a_parts = [t.bank.A for t in terms]
    b_parts = [t.bank.B if alpha is not None else t.bank.B * t.coeff for t in terms]
    return _cat(a_parts, 1, dtype), _cat(b_parts, 2, dtype), 1.0 if alpha is None else alpha


def prepared(layer: HiveLinear, routing: Routing, dtype: torch.dtype) -> Prepared:
    """:func:`prepare`, kept for the life of the routing when no gradient is needed."""
    if routing.overrides or routing.extra or (torch.is_grad_enabled() and any(p.requires_grad for p in layer.banks.parameters())):
        return prepare(layer, routing, dtype)
    _plan(layer, routing)  # registers the routing, so the cache entry dies with it
    cache = _CACHE.setdefault(id(routing), {})
    hit = cache.get(id(layer))
    if hit is not None and hit[0] == dtype:
        return hit[1]
    prep = prepare(layer, routing, dtype)
    cache[id(layer)] = (dtype, prep)
    return prep


# ---------------------------------------------------------------------------- forward
def apply(prep: Prepared, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y + Σ_l c_l·B_l·A_l·x`` with the prepared weights; ``x`` is (B, T, in) or (B, in).

    Without autograd the expands accumulate into ``y`` in place (it is the fresh base output,
    held by nothing else), which saves a copy of the activations per expand.
    """
    inplace = not torch.is_grad_enabled()
    x3 = x.unsqueeze(1) if x.dim() == 2 else x  # (B, T, in)
    out = y.unsqueeze(1) if y.dim() == 2 else y  # (B, T, out)
    if prep.a_one is not None and prep.b_one is not None:
        h = (x3 @ prep.a_one.t()).view(-1, prep.a_one.shape[0])  # (N, R_s)
        flat = out.view(-1, out.shape[-1])  # (N, out)
        b = prep.b_one.t()
        flat = flat.addmm_(h, b, alpha=prep.alpha_one) if inplace else torch.addmm(flat, h, b, alpha=prep.alpha_one)
        out = flat.view(out.shape)
    if prep.a_rows is not None and prep.b_rows is not None:
        h = torch.bmm(x3, prep.a_rows.transpose(1, 2))  # (B, T, R_r)
        b = prep.b_rows.transpose(1, 2)
        out = out.baddbmm_(h, b, alpha=prep.alpha_rows) if inplace else torch.baddbmm(out, h, b, alpha=prep.alpha_rows)
    if prep.dense is not None:  # every slot at once, each column scaled on the rows it runs for (adapters/dense.py)
        a_all, b_all, scale = prep.dense
        h = (x3 @ a_all.t()).mul_(scale.unsqueeze(1)).view(-1, a_all.shape[0])  # (N, C)
        flat = out.view(-1, out.shape[-1])  # (N, out)
        flat = flat.addmm_(h, b_all) if inplace else torch.addmm(flat, h, b_all)
        out = flat.view(out.shape)
    return out.view(y.shape)
