"""Validated configuration of a sequential knowledge-implant run (``lorahive implant``; issue 19 part B).

A run applies CounterFact edits one after another to one hive and scores them at
checkpoints (:mod:`lorahive.implant.sequential`). Every field is documented; a bad value
fails at load with the field's name and what is allowed (:func:`parse_implant`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorahive.config.defaults import DEFAULT_BASE
from lorahive.config.errors import ConfigError, format_config_error
from lorahive.config.load import apply_overrides

__all__ = ["IMPLANT_METHODS", "ImplantConfig", "parse_implant"]

#: What a run can compare: the hive's band-limited slot + consolidation, a plain LoRA, the base model.
Method = Literal["hive", "lora", "unedited"]
IMPLANT_METHODS: tuple[Method, ...] = ("hive", "lora", "unedited")


class ImplantConfig(BaseModel):
    """A sequential implant run: which edits, how each is written, where scores are taken."""

    model_config = ConfigDict(extra="forbid")

    data: str | None = Field(default=None, description="CounterFact JSON file; null = the 32-record slice shipped in the package")
    base: str = Field(default=DEFAULT_BASE, min_length=1, description="base model: embedded:smollm2-135m or a local HF directory")
    edits: int = Field(default=1000, strict=True, gt=0, description="edits applied, in file order")
    methods: tuple[Method, ...] = Field(default=IMPLANT_METHODS, min_length=1, description="methods run, each on a fresh hive")
    writer: Literal["plain", "curriculum"] = Field(default="plain", description="how the hive writes one edit: plain fine-tune or part A's curriculum")
    steps: int = Field(default=24, strict=True, gt=0, description="most optimizer steps per edit (the lora baseline takes exactly this many)")
    check_every: int = Field(default=4, strict=True, gt=0, description="the hive's early-stopping check runs every this many steps")
    margin: float = Field(default=1.0, ge=0.0, description="early stop once mean log P(new) − log P(old) per token exceeds this on every training row")
    lr: float = Field(default=5e-3, gt=0, description="learning rate of the per-edit slot and of the lora baseline")
    rank: int = Field(default=4, strict=True, gt=0, le=256, description="rank of the per-edit slot")
    alpha: float = Field(default=8.0, gt=0, description="LoRA alpha of the per-edit slot and the lora baseline")
    lora_lr: float | None = Field(default=None, gt=0, description="learning rate of the lora baseline; null = lr")
    lora_rank: int = Field(default=8, strict=True, gt=0, le=1024, description="rank of the lora baseline's one level (every block)")
    memory_rank: int | None = Field(default=None, gt=0, description="rank of the slow memory level; null = the model's hidden size (consolidation is exact)")
    band: tuple[int, int] = Field(default=(4, 8), description="first and last decoder block (inclusive) the per-edit slot and memory wrap")
    targets: tuple[str, ...] = Field(default=("gate_proj", "up_proj", "down_proj"), min_length=1, description="projections of the band the hive writes")
    consolidate_every: int = Field(default=1, strict=True, gt=0, description="edits between two consolidations of the per-edit slot into memory")
    contexts: int = Field(default=2, strict=True, ge=0, le=16, description="generated prefixes the prompt is also learned after (paraphrase-like contexts)")
    replay: int = Field(default=2, strict=True, ge=0, le=64, description="earlier edits replayed as rows of each edit's steps (hive, plain writer)")
    neighbours: int = Field(default=4, strict=True, ge=0, le=16, description="the prompt about other subjects, kept at the hive's current answer (hive, plain writer)")
    neighbour_answers: Literal["base", "hive"] = Field(default="base", description="what the neighbour rows keep: the base model's continuation or the hive's current one")
    anchor: float = Field(default=2.0, ge=0.0, description="weight of the KL to the base model on the training rows' prompt text")
    checkpoints: tuple[int, ...] = Field(default=(1, 10, 100, 1000), min_length=1, description="edit counts after which all edits so far are scored")
    length_normalised: bool = Field(default=True, description="compare mean per-token log-probabilities (ROME's evaluation code); false: whole-sequence probabilities")
    probe_layer: int | None = Field(default=None, ge=0, description="hidden-state layer the linear probe reads (0 = embeddings); null = the band's output")
    budget: float = Field(default=0.05, gt=0, description="curriculum writer only: KL budget per step on the probe set")
    variants: int = Field(default=50, strict=True, gt=0, description="curriculum writer only: micro-variants per edit")
    protect: Literal["none", "nullspace"] = Field(default="none", description="hive only: none, or nullspace — each edit's slot A rows projected off the preserved keys (implant/protect.py)")
    null_energy: float = Field(default=0.01, gt=0.0, lt=1.0, description="nullspace: the preserved basis U holds the top eigenvectors carrying all but this fraction of the keys' energy")
    protect_tokens: int = Field(default=2048, strict=True, gt=0, description="nullspace: tokens of the held-out WikiText-2 slice whose band inputs are preserved")
    protect_edits: bool = Field(default=False, description="nullspace: also preserve earlier edits' inputs at their last subject token (off: measured better at 20 edits, docs/implantation.md)")
    seed: int = Field(default=0, strict=True, description="seed of the hives and the probe's split")
    save_every: int = Field(default=50, strict=True, ge=0, description="each method's state is saved every this many edits (0 = never), so `lorahive implant --resume` continues an interrupted run exactly")
    threads: int | None = Field(default=None, gt=0, description="torch CPU threads (null: torch's default)")

    @field_validator("band")
    @classmethod
    def _band(cls, band: tuple[int, int]) -> tuple[int, int]:
        if band[0] < 0 or band[1] < band[0]:
            raise ValueError(f"band must be [first, last] with 0 ≤ first ≤ last, got {list(band)}")
        return band

    @field_validator("checkpoints")
    @classmethod
    def _checkpoints(cls, points: tuple[int, ...]) -> tuple[int, ...]:
        if any(p < 1 for p in points):
            raise ValueError(f"checkpoints must be edit counts ≥ 1, got {list(points)}")
        return tuple(sorted(set(points)))

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(m for m in IMPLANT_METHODS if m in methods)  # a fixed order, no repeats

    @model_validator(mode="after")
    def _steps_cover_checks(self) -> ImplantConfig:
        if self.check_every > self.steps:
            raise ValueError(f"check_every ({self.check_every}) must be ≤ steps ({self.steps})")
        return self

    def blocks(self) -> tuple[int, ...]:
        """The band as block indices."""
        return tuple(range(self.band[0], self.band[1] + 1))

    def score_points(self) -> list[int]:
        """The checkpoints that fall within the run, and always the last edit."""
        return sorted({p for p in self.checkpoints if p <= self.edits} | {self.edits})


def parse_implant(tree: dict[str, Any] | None, overrides: list[str] | tuple[str, ...] = ()) -> ImplantConfig:
    """Validate an implant config tree after ``key=value`` overrides; a :class:`ConfigError` names each bad field."""
    data = apply_overrides(tree, overrides)
    try:
        return ImplantConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_config_error(e)) from None
