"""Mechanisms (DESIGN.md §3): small, replaceable components, one file each."""

from lorahive.mechanisms.aggregation import (
    Aggregator,
    Clipped,
    Delta,
    Mean,
    Median,
    Proposal,
    TrimmedMean,
    Weighted,
)
from lorahive.mechanisms.compose import build_aggregator
from lorahive.mechanisms.resonance import Resonance, SwarmDirection
from lorahive.mechanisms.validation import Validated

__all__ = [
    "Aggregator",
    "Clipped",
    "Delta",
    "Mean",
    "Median",
    "Proposal",
    "Resonance",
    "SwarmDirection",
    "TrimmedMean",
    "Validated",
    "Weighted",
    "build_aggregator",
]
