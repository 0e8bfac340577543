"""The composed aggregator that an :class:`~lorahive.config.AggregationConfig` describes.

The composition, outermost first, follows the order of the tick's step 2 (DESIGN.md §2)::

    Validated(reject_norm)  ->  Resonance(α, β, cap)  ->  Clipped(max_norm)  ->  strategy

Validation runs first so that nothing malformed reaches the arithmetic; resonance weights
the valid proposals; clipping last bounds what any single proposal can contribute, boost
included. When resonance is off, a :class:`Resonance` with ``α = β = 0`` still tracks the
swarm direction (it changes no weight), so the ledger's cosine column means the same thing
in every configuration.

The composed aggregator is the compose phase's own step: the swarm calls it before the
compose-phase mechanisms run (they see its typed decisions), and checkpoints its
``state_dict`` with every mechanism's, under the name ``aggregation``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from lorahive.config import AggregationConfig, format_config_error
from lorahive.mechanisms.aggregation import Aggregator, Clipped, Mean, Median, TrimmedMean, Weighted
from lorahive.mechanisms.resonance import Resonance, SwarmDirection
from lorahive.mechanisms.validation import Validated

__all__ = ["build_aggregator"]


def _strategy(cfg: AggregationConfig) -> Aggregator:
    if cfg.strategy == "mean":
        return Mean()
    if cfg.strategy == "weighted":
        return Weighted()
    if cfg.strategy == "median":
        return Median()
    return TrimmedMean(cfg.trim)


def build_aggregator(cfg: AggregationConfig | dict[str, Any] | None = None, direction: SwarmDirection | None = None) -> Aggregator:
    """The composed aggregator of ``cfg`` (a config, a plain dict, or None for the defaults).

    ``direction`` is the swarm direction resonance weighs by, when a run's
    :class:`~lorahive.mechanisms.resonance.DirectionTracker` keeps it; without one the
    resonance wrapper keeps its own.

    A dict with bad values raises ``ValueError`` naming each bad field and its allowed range.
    """
    if not isinstance(cfg, AggregationConfig):
        try:
            cfg = AggregationConfig.model_validate(cfg or {})
        except ValidationError as e:
            raise ValueError(format_config_error(e, "aggregation")) from None
    agg: Aggregator = _strategy(cfg)
    if cfg.max_norm is not None:
        agg = Clipped(agg, cfg.max_norm, cfg.clip_by_reputation)
    if cfg.resonance:
        agg = Resonance(agg, cfg.alpha, cfg.beta, cfg.cap, cfg.ema, direction)
    else:
        agg = Resonance(agg, 0.0, 0.0, 1.0, cfg.ema, direction)
    return Validated(agg, cfg.reject_norm, reject_norm_ratio=cfg.reject_norm_ratio)
