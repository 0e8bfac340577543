"""Adapter banks, the HiveLinear layer, per-row routing and model injection."""

from lorahive.adapters.bank import InitMismatch, LevelBank
from lorahive.adapters.layer import HiveLinear
from lorahive.adapters.model import inject
from lorahive.adapters.probe import ActivityProbe, add_totals, mean_activity
from lorahive.adapters.routing import Routing, RoutingState

__all__ = ["ActivityProbe", "HiveLinear", "InitMismatch", "LevelBank", "Routing", "RoutingState", "add_totals", "inject", "mean_activity"]
