"""Adapter banks, the HiveLinear layer, per-row routing and model injection."""

from lorahive.adapters.bank import LevelBank
from lorahive.adapters.layer import HiveLinear
from lorahive.adapters.model import inject
from lorahive.adapters.probe import ActivityProbe, mean_activity
from lorahive.adapters.routing import Routing, RoutingState

__all__ = ["ActivityProbe", "HiveLinear", "LevelBank", "Routing", "RoutingState", "inject", "mean_activity"]
