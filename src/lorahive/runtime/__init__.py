"""Agents, tasks and the hive (facade and tick loop)."""

from lorahive.runtime.hive import Hive

__all__ = ["Hive"]
