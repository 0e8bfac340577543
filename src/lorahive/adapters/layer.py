"""HiveLinear: a frozen Linear plus a stack of per-row routed LoRA levels (DESIGN.md §1).

    y = W0·x + Σ_l  mix_l · (alpha_l / r_l) · B_l[s_l(row)] · A_l[s_l(row)] · x
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from lorahive.adapters.bank import LevelBank, routed_delta
from lorahive.adapters.fused import Pool, wants_fused
from lorahive.adapters.fused_train import fused_forward
from lorahive.adapters.merge import mergeable, merged_weight, without
from lorahive.adapters.routing import Routing, RoutingState
from lorahive.config import LevelSpec


class HiveLinear(nn.Module):
    """Wraps one ``nn.Linear``; holds one :class:`LevelBank` per level that targets it."""

    def __init__(self, base: nn.Linear, name: str, levels: list[LevelSpec], slots: dict[str, int], state: RoutingState, seed: int) -> None:
        super().__init__()
        self.base = base
        self.name = name
        self.state = state
        self.scales = {lv.name: lv.scale for lv in levels}
        self.banks = nn.ModuleDict(
            {
                lv.name: LevelBank(slots[lv.name], lv.rank, base.in_features, base.out_features, key=f"{seed}/{lv.name}/{name}")
                for lv in levels
            }
        )
        dev, dt = base.weight.device, torch.float32
        self.banks.to(device=dev, dtype=dt)
        self.merged: tuple[tuple[object, ...], torch.Tensor] | None = None  # the base weight with shared terms folded in (adapters/merge.py)
        # the levels concatenated and cast between forwards, for routings that pool (adapters/fused.py)
        self.pooled: Pool | None = None

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def _report(self, x: torch.Tensor, routing: Routing) -> None:
        probe = self.state.probe
        assert probe is not None
        probe.take_input(self.name, x)
        for level in probe.levels:
            if level in self.banks and routing.runs(level):
                bank = cast(LevelBank, self.banks[level])
                # a level on proposal slots (copies of its shared slot 0) is the bank's slot 0 for every row
                slots = None if level in routing.overrides else routing.slots.get(level)
                a, b = (bank.A, bank.B) if level in routing.overrides else routing.weights(level, self.name, bank.A, bank.B)
                probe.observe(level, x, a, b, slots, routing.mix.get(level, 1.0) * self.scales[level], size=bank.A.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routing = self.state.current
        if routing is None:
            raise RuntimeError(f"{self.name}: HiveLinear called outside a routing context; use the Hive's methods")
        if self.state.probe is not None:
            self._report(x, routing)
        merged = mergeable(self, routing) if self.state.merge else frozenset()
        if merged:  # the terms every row shares, folded into the weight: only the per-row ones run below
            y = F.linear(x, merged_weight(self, routing, merged), self.base.bias)
            routing = without(routing, merged)
        else:
            y = self.base(x)
        if wants_fused(x):  # one shrink + one expand for all levels (adapters/fused.py)
            return fused_forward(self, x, y, routing)
        for level, module in self.banks.items():
            bank = cast(LevelBank, module)
            if not routing.runs(level):
                continue
            a, b = routing.weights(level, self.name, bank.A, bank.B)
            delta = routed_delta(x, a, b, routing.slots.get(level), routing.host_slots.get(level))
            gate = routing.gates.get(level)
            if gate is not None:
                delta = delta * gate.to(delta.dtype).view(-1, *([1] * (delta.dim() - 1)))
            y = y + (routing.mix.get(level, 1.0) * self.scales[level]) * delta
        return y
