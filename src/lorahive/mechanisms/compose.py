"""Configuration of the swarm-level aggregation, and the composed aggregator it builds.

The composition, outermost first, follows the order of the tick's step 2 (DESIGN.md §2)::

    Validated(reject_norm)  ->  Resonance(α, β, cap)  ->  Clipped(max_norm)  ->  strategy

Validation runs first so that nothing malformed reaches the arithmetic; resonance weights
the valid proposals; clipping last bounds what any single proposal can contribute, boost
included. When resonance is off, a :class:`Resonance` with ``α = β = 0`` still tracks the
swarm direction (it changes no weight), so the ledger's cosine column means the same thing
in every configuration.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lorahive.mechanisms.aggregation import Aggregator, Clipped, Mean, Median, TrimmedMean, Weighted
from lorahive.mechanisms.resonance import Resonance
from lorahive.mechanisms.validation import Validated

__all__ = ["AggregationConfig", "build_aggregator", "format_config_error"]

Strategy = Literal["mean", "weighted", "median", "trimmed_mean"]


class AggregationConfig(BaseModel):
    """How proposals for a shared level become one update."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Strategy = Field(default="weighted", description="mean | weighted (quality × reputation) | median (coordinate-wise) | trimmed_mean")
    trim: float = Field(default=0.2, ge=0.0, lt=0.5, description="trimmed_mean: fraction β dropped at each end, in [0, 0.5)")
    max_norm: float | None = Field(default=None, gt=0, description="clip each proposal's global L2 norm to this (> 0); null = no clipping")
    reject_norm: float | None = Field(default=None, gt=0, description="reject proposals whose global L2 norm exceeds this (> 0); null = no bound")
    reject_norm_ratio: float | None = Field(default=None, ge=1, description="reject proposals whose norm exceeds this multiple (≥ 1) of the tick's median proposal norm; null = off")
    clip_by_reputation: bool = Field(default=False, description="clip each proposal to max_norm × its agent's reputation (in [0, 1]) instead of max_norm")
    resonance: bool = Field(default=True, description="horizontal resonance on/off")
    alpha: float = Field(default=0.5, ge=0.0, description="resonance boost 1 + α·cos for aligned proposals (≥ 0)")
    beta: float = Field(default=0.5, ge=0.0, description="resonance damping 1 + β·cos for opposed proposals (≥ 0)")
    cap: float = Field(default=2.0, ge=1.0, description="largest resonance factor (≥ 1)")
    ema: float = Field(default=0.9, ge=0.0, lt=1.0, description="EMA coefficient of the swarm's running direction, in [0, 1)")

    @model_validator(mode="after")
    def _clip_for_reputation(self) -> AggregationConfig:
        if self.clip_by_reputation and self.max_norm is None:
            raise ValueError("clip_by_reputation needs max_norm (the bound that reputation scales)")
        return self


def format_config_error(err: ValidationError, prefix: str = "aggregation") -> str:
    """One line per bad field: ``aggregation.trim: Input should be less than 0.5 (got 0.7)``."""
    lines = []
    for e in err.errors():
        field = ".".join(str(x) for x in (prefix, *e["loc"]))
        got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
        lines.append(f"{field}: {e['msg']}{got}")
    return "\n".join(lines)


def _strategy(cfg: AggregationConfig) -> Aggregator:
    if cfg.strategy == "mean":
        return Mean()
    if cfg.strategy == "weighted":
        return Weighted()
    if cfg.strategy == "median":
        return Median()
    return TrimmedMean(cfg.trim)


def build_aggregator(cfg: AggregationConfig | dict[str, Any] | None = None) -> Aggregator:
    """The composed aggregator of ``cfg`` (a config, a plain dict, or None for the defaults).

    A dict with bad values raises ``ValueError`` naming each bad field and its allowed range.
    """
    if not isinstance(cfg, AggregationConfig):
        try:
            cfg = AggregationConfig.model_validate(cfg or {})
        except ValidationError as e:
            raise ValueError(format_config_error(e)) from None
    agg: Aggregator = _strategy(cfg)
    if cfg.max_norm is not None:
        agg = Clipped(agg, cfg.max_norm, cfg.clip_by_reputation)
    if cfg.resonance:
        agg = Resonance(agg, cfg.alpha, cfg.beta, cfg.cap, cfg.ema)
    else:
        agg = Resonance(agg, 0.0, 0.0, 1.0, cfg.ema)
    return Validated(agg, cfg.reject_norm, reject_norm_ratio=cfg.reject_norm_ratio)
