"""Shared levels folded into the base weights for inference (issue [5/10], item 3).

With :attr:`RoutingState.merge` on, a forward without autograd runs every shared term that
adds the same to every row — a level the routing runs with no per-row slots, gate, override
or extra slots — as part of one merged weight per module,

    W' = W0 + Σ_l  mix_l · (alpha_l / r_l) · B_l[0] · A_l[0]

in the base weight's dtype, and only the per-row terms live. The merged weight is kept per
module and rebuilt when a merged level's factors or mix change (the tensors' version
counters, which every in-place write bumps, and their identities, which a grown bank
changes) in the same storage, so a CUDA graph recorded over it reads the new weight once the
host has refreshed it (core/captured.py). It costs one copy of the wrapped modules' weights; in bf16 the sum is rounded
once, so a ΔW far below the weights' resolution is partly lost (docs/performance.md).
Forwards under autograd (learning, proposals) never merge.
"""

from __future__ import annotations

import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import torch

from lorahive.adapters.bank import LevelBank
from lorahive.adapters.routing import Routing

if TYPE_CHECKING:
    from lorahive.adapters.layer import HiveLinear

__all__ = ["mergeable", "merged_weight", "without"]

_DERIVED: dict[tuple[Any, ...], Routing] = {}


def mergeable(layer: HiveLinear, routing: Routing) -> frozenset[str]:
    """The levels of ``layer`` that add the same to every row under ``routing`` (none under autograd)."""
    if torch.is_grad_enabled():
        return frozenset()
    skip = routing.slots.keys() | routing.gates.keys() | routing.overrides.keys() | routing.extra.keys()
    return frozenset(lv for lv in layer.banks if routing.runs(lv) and lv not in skip)


def without(routing: Routing, levels: frozenset[str]) -> Routing:
    """``routing`` with ``levels`` switched off (mix 0), kept for the routing's life so its caches stay hot."""
    key = (id(routing), levels, tuple(sorted(routing.mix.items())))
    derived = _DERIVED.get(key)
    if derived is None:
        derived = _DERIVED[key] = replace(routing, mix={**routing.mix, **dict.fromkeys(levels, 0.0)})
        weakref.finalize(routing, _DERIVED.pop, key, None)
    return derived


@torch.no_grad()
def merged_weight(layer: HiveLinear, routing: Routing, levels: frozenset[str]) -> torch.Tensor:
    """``W0 + Σ`` the ``levels``' terms of ``layer`` (slot 0 each), in the base weight's dtype; cached on the layer."""
    w = layer.base.weight
    banks = {lv: cast(LevelBank, layer.banks[lv]) for lv in sorted(levels)}
    key = (id(w), w._version, *((lv, routing.mix.get(lv, 1.0), id(b.A), b.A._version, id(b.B), b.B._version) for lv, b in banks.items()))
    cached = layer.merged
    if cached is not None and cached[0] == key:
        return cached[1]
    total = w.to(torch.float32, copy=True)  # one copy, in fp32 whatever the base dtype
    for lv, bank in banks.items():
        total.addmm_(bank.B[0].float(), bank.A[0].float(), alpha=routing.mix.get(lv, 1.0) * layer.scales[lv])
    if cached is not None and cached[1].shape == w.shape and cached[1].dtype == w.dtype:
        merged = cached[1].copy_(total)  # the same storage: a recorded graph keeps reading it
    else:
        merged = total.to(w.dtype)
    layer.merged = (key, merged)
    return merged
