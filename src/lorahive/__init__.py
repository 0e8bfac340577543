"""lorahive: a multi-level, multi-agent LoRA memory for a fleet of LLM agents.

``Hive`` is imported on first use (PEP 562), so ``import lorahive.config`` and the other
light modules do not pay for torch and transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lorahive.config import LevelSpec, StackSpec, default_levels

if TYPE_CHECKING:
    from lorahive.runtime.hive import Hive

__all__ = ["Hive", "LevelSpec", "StackSpec", "default_levels"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Load ``Hive`` (and with it torch) only when someone asks for it."""
    if name == "Hive":
        from lorahive.runtime.hive import Hive

        globals()["Hive"] = Hive  # later lookups skip this function
        return Hive
    raise AttributeError(f"module 'lorahive' has no attribute {name!r}")
