"""The model core: the frozen LM with routed levels, the agent registry, level state, write primitives.

``store/`` (checkpoints, PEFT interop), ``observe/`` and ``mechanisms/`` build on this package;
it imports nothing from them or from ``runtime/``.
"""

from lorahive.core.captured import CapturedForward
from lorahive.core.captured_decode import CapturedDecode
from lorahive.core.footprint import Footprint, footprint
from lorahive.core.lowrank import refactor
from lorahive.core.model import HiveCore, persistent_levels
from lorahive.core.pins import RowPins, pin
from lorahive.core.state import LevelState, LevelStateError

__all__ = ["CapturedDecode", "CapturedForward", "Footprint", "HiveCore", "LevelState", "LevelStateError", "RowPins", "footprint", "persistent_levels", "pin", "refactor"]
