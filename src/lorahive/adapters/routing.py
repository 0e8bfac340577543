"""Per-row routing: which slot of each level every row of the batch uses.

One :class:`RoutingState` is shared by every wrapped layer of a model; the hive sets its
``current`` routing for the duration of a forward pass or a ``generate`` call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from lorahive.adapters.probe import ActivityProbe


@dataclass(frozen=True)
class Routing:
    """Routing of one batch.

    slots: level name -> (B,) long tensor of the slot each row uses (absent: slot 0 for all).
    active: names of levels to run; ``None`` runs every level (ablation switches levels off).
    mix: level name -> mixing coefficient α_l(t) (absent: 1.0).
    gates: level name -> (B,) float multiplier per row (absent: 1.0); lets one batch hold
        many level subsets at once, as influence measurement needs.
    overrides: level name -> module path -> (A, B) tensors used instead of that level's bank,
        with their own slot dimension: the per-agent *proposal slots* of a shared level, each
        a copy of the level's slot 0 (an activity probe reports the bank's slot 0 for them).
    extra: level name -> module path -> (A, B) slots appended after that level's bank, read but
        never trained through: a row whose slot is ≥ the bank's size uses ``extra`` row
        ``slot − size`` (the context modes' factors for replayed rows; the bank's own slots
        still get their gradients, since the two are joined at every forward).
    uniform: levels of ``slots`` whose rows all use the same slot. ``None`` (unknown) makes
        the fused path find out by reading the device; the hive always says.
    host_slots: the slots of ``slots`` as host tuples, where known; the reference path groups
        rows by slot with them instead of gathering per-row weights.
    pooled: forwards without autograd keep each module's levels concatenated and cast, whole
        banks, between forwards (adapters/fused.py), so a forward gathers each row's weights
        in one index per factor; what a captured graph replays (core/captured.py).
    """

    slots: dict[str, torch.Tensor] = field(default_factory=dict)
    active: frozenset[str] | None = None
    mix: dict[str, float] = field(default_factory=dict)
    gates: dict[str, torch.Tensor] = field(default_factory=dict)
    overrides: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    extra: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    uniform: frozenset[str] | None = None
    host_slots: dict[str, tuple[int, ...]] = field(default_factory=dict)
    pooled: bool = False

    def runs(self, level: str) -> bool:
        return (self.active is None or level in self.active) and self.mix.get(level, 1.0) != 0.0

    def weights(self, level: str, name: str, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Module ``name``'s factors of ``level`` for this routing: its override, its bank ``(a, b)`` joined with the extra slots, or the bank."""
        override = self.overrides.get(level, {}).get(name)
        if override is not None:
            return override
        extra = self.extra.get(level, {}).get(name)
        if extra is not None:
            return torch.cat([a, extra[0].to(a.dtype)]), torch.cat([b, extra[1].to(b.dtype)])
        return a, b


class RoutingState:
    """Holder of the routing in force, shared by all HiveLinear layers of one model."""

    def __init__(self) -> None:
        self.current: Routing | None = None
        self.probe: ActivityProbe | None = None
        self.merge = False  # forwards without autograd fold the shared terms into merged weights (adapters/merge.py)

    @contextmanager
    def merging(self, on: bool = True) -> Iterator[None]:
        """Within the block, forwards without autograd run the terms every row shares as merged weights (adapters/merge.py)."""
        previous, self.merge = self.merge, on
        try:
            yield
        finally:
            self.merge = previous

    @contextmanager
    def probing(self, probe: ActivityProbe) -> Iterator[ActivityProbe]:
        """Report every wrapped layer's input to ``probe`` while the block runs."""
        previous, self.probe = self.probe, probe
        try:
            yield probe
        finally:
            self.probe = previous

    @contextmanager
    def use(self, routing: Routing) -> Iterator[Routing]:
        previous, self.current = self.current, routing
        try:
            yield routing
        finally:
            self.current = previous
