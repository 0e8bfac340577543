"""Mechanisms (DESIGN.md §3, §7): small, replaceable components, one file each."""

from lorahive.mechanisms.aggregation import (
    Aggregator,
    Clipped,
    Mean,
    Median,
    TrimmedMean,
    Weighted,
)
from lorahive.mechanisms.attack import Attack
from lorahive.mechanisms.base import (
    PHASES,
    Action,
    Aggregate,
    Decision,
    Delta,
    Mechanism,
    Proposal,
    TickView,
)
from lorahive.mechanisms.compose import build_aggregator
from lorahive.mechanisms.registry import build_mechanisms
from lorahive.mechanisms.resonance import Resonance, SwarmDirection
from lorahive.mechanisms.validation import Validated

__all__ = [
    "PHASES",
    "Action",
    "Aggregate",
    "Aggregator",
    "Attack",
    "Clipped",
    "Decision",
    "Delta",
    "Mean",
    "Mechanism",
    "Median",
    "Proposal",
    "Resonance",
    "SwarmDirection",
    "TickView",
    "TrimmedMean",
    "Validated",
    "Weighted",
    "build_aggregator",
    "build_mechanisms",
]
