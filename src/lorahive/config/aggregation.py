"""Configuration of the swarm-level aggregation: how proposals become one update.

:func:`lorahive.mechanisms.compose.build_aggregator` turns it into the composed aggregator
(validation, resonance, clipping, strategy); the config lives here so that reading or
checking a run config needs no torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["AggregationConfig", "Strategy"]

Strategy = Literal["mean", "weighted", "median", "trimmed_mean"]


class AggregationConfig(BaseModel):
    """How proposals for a shared level become one update."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

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
