"""lorahive: a multi-level, multi-agent LoRA memory for a fleet of LLM agents."""

from lorahive.config import LevelSpec, StackSpec, default_levels
from lorahive.runtime.hive import Hive

__all__ = ["Hive", "LevelSpec", "StackSpec", "default_levels"]
__version__ = "0.1.0"
