"""Configuration of simulated malicious agents, for testing defences.

:mod:`lorahive.mechanisms.attack` is the ``solve``-phase mechanism that carries the attack
out; the kinds are described in its docstring.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AttackConfig", "AttackKind"]

AttackKind = Literal["sign_flip", "noise", "nan", "inf", "backdoor"]


class AttackConfig(BaseModel):
    """Which agents attack, and how (a fraction of 0 means no attack)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    fraction: float = Field(default=0.0, ge=0.0, le=1.0, description="fraction of agents that attack, in [0, 1]; rounded to the nearest count")
    kind: AttackKind = Field(default="sign_flip", description="sign_flip | noise | nan | inf | backdoor")
    scale: float = Field(default=10.0, gt=0, description="attack strength (> 0): the multiple of the attacker's honest gradient norm")
