"""Level state: what a level is *now*, as opposed to what its spec said at the start.

A :class:`~lorahive.config.LevelSpec` is frozen: rank, scope, the base inertia β_l and the
base learning rate η_l. Mechanisms (emergent inertia, the entropy budget, vertical resonance)
change a level while the system runs; those changing numbers live here, one
:class:`LevelState` per level, are checkpointed with the run and recorded in the ledger.
The step size every write primitive uses is :attr:`LevelState.step_size`, read at the time
of the step (DESIGN.md §2: ``η_l · (1 − inertia_l(t))``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from lorahive.config import LevelSpec

__all__ = ["LevelState", "LevelStateError"]


class LevelStateError(ValueError):
    """A level state that cannot be used (names the level and the field)."""


@dataclass
class LevelState:
    """The changing numbers of one level.

    mix: mixing coefficient α_l(t) of the level's term in every forward.
    inertia: current inertia in [0, 1]; the step size is ``lr · (1 − inertia)``.
    lr: current base learning rate η_l (> 0).
    thresholds: named thresholds a mechanism adjusts (e.g. ``screening``), finite numbers.
    """

    mix: float
    inertia: float
    lr: float
    thresholds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: LevelSpec) -> LevelState:
        return cls(mix=spec.mix, inertia=spec.inertia, lr=spec.lr)

    @property
    def step_size(self) -> float:
        """η_l(t) · (1 − inertia_l(t)): the step every optimizer step of this level takes."""
        return self.lr * (1.0 - self.inertia)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, level: str, data: Any) -> LevelState:
        """Validate a checkpointed state; every bad field is named."""
        if not isinstance(data, dict):
            raise LevelStateError(f"level_states.{level}: must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {"mix", "inertia", "lr", "thresholds"})
        if unknown:
            raise LevelStateError(f"level_states.{level}: unknown fields {unknown}")
        vals: dict[str, float] = {}
        for key, lo, hi in (("mix", -math.inf, math.inf), ("inertia", 0.0, 1.0), ("lr", 0.0, math.inf)):
            v = data.get(key)
            if not _number(v) or not lo <= float(v or 0) <= hi or (key == "lr" and float(v or 0) <= 0):
                allowed = "a finite number" if key == "mix" else ("in [0, 1]" if key == "inertia" else "> 0 and finite")
                raise LevelStateError(f"level_states.{level}.{key}: must be {allowed}, got {v!r}")
            vals[key] = float(v or 0)
        th = data.get("thresholds", {})
        if not isinstance(th, dict) or not all(isinstance(k, str) and _number(v) for k, v in th.items()):
            raise LevelStateError(f"level_states.{level}.thresholds: must map names to finite numbers, got {th!r}")
        return cls(mix=vals["mix"], inertia=vals["inertia"], lr=vals["lr"], thresholds={k: float(v) for k, v in th.items()})


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
