"""Validated configuration of the LoRA level stack.

A *level* is one LoRA adapter family that learns at its own speed (DESIGN.md §1). Its scope
says how many weight slots it holds: ``shared`` levels have one slot for the whole swarm,
``agent`` levels one per agent, ``task`` levels one per agent's running task.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["DEFAULT_TARGETS", "LevelSpec", "Scope", "StackSpec", "as_stack", "block_of", "default_levels"]

Scope = Literal["shared", "agent", "task"]

#: Projections wrapped by default: every attention and MLP projection of Llama/Qwen/Mistral.
DEFAULT_TARGETS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


class LevelSpec(BaseModel):
    """One level of the stack: ``y += mix · (alpha / rank) · B[slot] · A[slot] · x``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="unique level name")
    rank: int = Field(strict=True, gt=0, le=4096, description="LoRA rank r_l")
    alpha: float = Field(strict=True, gt=0, description="LoRA alpha a_l; the scale is alpha / rank")
    scope: Scope = Field(description="shared (one slot), agent (one per agent) or task (one per running task)")
    inertia: float = Field(strict=True, ge=0.0, le=1.0, description="base inertia β_l; step size is lr·(1−inertia)")
    lr: float = Field(strict=True, gt=0, description="learning rate η_l")
    trainable: bool = Field(strict=True, default=True, description="whether learn() updates this level")
    mix: float = Field(strict=True, default=1.0, description="mixing coefficient α_l(t) at start")
    weight_decay: float = Field(strict=True, default=0.0, ge=0.0, description="AdamW weight decay of this level")
    targets: tuple[str, ...] = Field(default=DEFAULT_TARGETS, min_length=1, description="names of the Linear modules to wrap")
    blocks: tuple[int, ...] | None = Field(default=None, description="indices of the decoder blocks whose targets are wrapped; null = every block")

    @field_validator("blocks")
    @classmethod
    def _distinct_blocks(cls, blocks: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if blocks is None:
            return None
        if not blocks or any(b < 0 for b in blocks) or len(set(blocks)) != len(blocks):
            raise ValueError(f"blocks must be distinct block indices ≥ 0 (or null for every block), got {list(blocks)}")
        return tuple(sorted(blocks))

    def wraps(self, path: str) -> bool:
        """Whether this level has a bank at module ``path``: its leaf name is a target, its block in ``blocks``."""
        if path.rsplit(".", 1)[-1] not in self.targets:
            return False
        return self.blocks is None or block_of(path) in self.blocks

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def step_size(self) -> float:
        """Effective learning rate η_l · (1 − β_l)."""
        return self.lr * (1.0 - self.inertia)


def block_of(path: str) -> int | None:
    """The decoder block a module path lies in: its first all-digit part (``model.layers.3.mlp.up_proj`` → 3)."""
    return next((int(part) for part in path.split(".") if part.isdigit()), None)


class StackSpec(BaseModel):
    """The ordered level stack, slowest level first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    levels: tuple[LevelSpec, ...] = Field(min_length=1)

    @field_validator("levels")
    @classmethod
    def _unique_names(cls, levels: tuple[LevelSpec, ...]) -> tuple[LevelSpec, ...]:
        names = [lv.name for lv in levels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"level names must be unique; duplicated: {', '.join(dupes)}")
        return levels

    def names(self) -> list[str]:
        return [lv.name for lv in self.levels]

    def get(self, name: str) -> LevelSpec:
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise KeyError(f"unknown level {name!r}; levels are {self.names()}")


def default_levels() -> StackSpec:
    """The five-level stack of seed 004: foundation · domain · swarm · agent · context."""
    return StackSpec(
        levels=(
            LevelSpec(name="foundation", rank=64, alpha=64, scope="shared", inertia=0.99, lr=1e-4, trainable=False),
            LevelSpec(name="domain", rank=32, alpha=32, scope="shared", inertia=0.9, lr=2e-4),
            LevelSpec(name="swarm", rank=16, alpha=16, scope="shared", inertia=0.7, lr=5e-4),
            LevelSpec(name="agent", rank=8, alpha=16, scope="agent", inertia=0.5, lr=2e-3),
            LevelSpec(name="context", rank=4, alpha=8, scope="task", inertia=0.1, lr=2e-3),
        )
    )


def as_stack(levels: StackSpec | list[LevelSpec] | list[dict] | None) -> StackSpec:
    """Accept a StackSpec, a list of specs or dicts, or None (the default stack)."""
    if levels is None:
        return default_levels()
    if isinstance(levels, StackSpec):
        return levels
    return StackSpec(levels=tuple(LevelSpec.model_validate(lv) if isinstance(lv, dict) else lv for lv in levels))
