"""Row pins: rows of the coming learning calls that run given factors in one level instead of their agent's slot.

A row is known by its agent and its text, ``(agent, prompt, answer)``. While pins are armed on
the core (:attr:`HiveCore.pins`), every learning routing the hive builds — fast steps and
proposals — sends each pinned row of ``level`` to row ``m`` of ``factors`` (appended after the
level's bank as :attr:`Routing.extra`), and every other row to its agent's slot as before.
The pinned factors are read, never trained; the agents' own slots keep their gradients.

Context modes (mechanisms/context_modes.py) pin replayed examples to the mode their task type
took, so a past task is rehearsed with the context it is evaluated with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from lorahive.adapters import Routing

if TYPE_CHECKING:
    from lorahive.core.model import HiveCore

__all__ = ["RowKey", "RowPins", "pin"]

RowKey = tuple[str, str, str]  # agent, prompt, answer


@dataclass(frozen=True)
class RowPins:
    """Rows pinned to rows of ``factors`` in ``level``: module path -> ``A (K, r, in)``, ``B (K, out, r)``."""

    level: str
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    rows: Mapping[RowKey, int]


def pin(core: HiveCore, routing: Routing, keys: Sequence[RowKey]) -> Routing:
    """``routing`` with the pinned rows among ``keys`` (one per row of its batch) on their factors; itself if none is."""
    pins = core.pins
    if pins is None or not pins.rows or not routing.runs(pins.level) or pins.level in routing.overrides:
        return routing
    hit = [pins.rows.get(k) for k in keys]
    if all(m is None for m in hit):
        return routing
    level = pins.level
    size = next(iter(core.banks(level))).A.shape[0]
    own = routing.host_slots.get(level) or tuple(core.slots_of(level, [k[0] for k in keys]))
    rows = tuple(s if m is None else size + m for s, m in zip(own, hit, strict=True))
    return replace(
        routing,
        slots={**routing.slots, level: core.index(list(rows))},
        extra={**routing.extra, level: dict(pins.factors)},
        uniform=None if routing.uniform is None else routing.uniform - {level},
        host_slots={**routing.host_slots, level: rows},
    )
