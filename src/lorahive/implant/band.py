"""Layer-limited injection: a level restricted to a band of decoder blocks (seed note 001, "LoRA with a limited depth").

A level's banks exist only in the blocks its :attr:`LevelSpec.blocks` names, so what the
curriculum writes into it can change those layers and no others. :func:`layer_band` makes
such a stack before the hive is built; :func:`level_blocks` reads back where a level lives.
"""

from __future__ import annotations

from collections.abc import Sequence

from lorahive.config import StackSpec
from lorahive.config.levels import block_of
from lorahive.runtime.hive import Hive

__all__ = ["layer_band", "level_blocks"]


def layer_band(stack: StackSpec, level: str, blocks: Sequence[int]) -> StackSpec:
    """``stack`` with ``level`` wrapping only decoder ``blocks`` (e.g. ``range(12, 20)``); the other levels unchanged."""
    spec = stack.get(level)
    band = spec.model_validate(spec.model_dump() | {"blocks": tuple(blocks)})
    return StackSpec(levels=tuple(band if lv.name == level else lv for lv in stack.levels))


def level_blocks(hive: Hive, level: str) -> list[int]:
    """The decoder blocks in which ``level`` has banks (sorted)."""
    return sorted({b for path, _ in hive.core.named_banks(level) if (b := block_of(path)) is not None})
