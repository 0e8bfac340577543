"""What a micro-variant is, and how to ask for them (:func:`~lorahive.implant.variants.make_variants` builds them)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

__all__ = ["DEFAULT_MARKERS", "KINDS", "Variant", "VariantSpec", "edit_distance"]

KINDS: tuple[str, ...] = ("growth", "marker", "synonym", "reorder")
DEFAULT_MARKERS: tuple[str, ...] = (
    "Fact:", "Note that", "Remember:", "Key point:", "In short,", "Indeed,",
    "Recall that", "Notably,", "True:", "Known:", "Note:", "Important:",
)  # fmt: skip


class VariantSpec(BaseModel):
    """What to vary and how much; a bad value fails with the field's name and what is allowed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1, description="the text the target continues")
    target: str = Field(min_length=1, description="the continuation to learn (e.g. ' Paris')")
    n: int = Field(default=50, strict=True, ge=1, le=10_000, description="how many variants")
    seed: int = Field(default=0, strict=True, description="same seed, same variants")
    top_k: int = Field(default=8, strict=True, ge=1, le=256, description="synonym candidates: the model's top-k predictions")
    growth: int = Field(default=1, strict=True, ge=1, le=2, description="target tokens added per growth variant: 1 or 2")
    markers: tuple[str, ...] = Field(default=DEFAULT_MARKERS, min_length=1, description="marker phrases to insert")
    keep: tuple[str, ...] = Field(default=(), description="phrases of the prompt no synonym swap or marker may break (e.g. the subject)")

    @field_validator("prompt", "target")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("must contain a non-space character")
        return text

    @field_validator("markers")
    @classmethod
    def _markers(cls, markers: tuple[str, ...]) -> tuple[str, ...]:
        if any(not m.strip() for m in markers):
            raise ValueError("every marker must contain a non-space character")
        return markers

    @field_validator("keep")
    @classmethod
    def _kept_phrases_occur(cls, keep: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        prompt = info.data.get("prompt", "")
        missing = [k for k in keep if not k.strip() or k not in prompt]
        if missing:
            raise ValueError(f"every phrase to keep must occur in the prompt; not found: {missing}")
        return keep


@dataclass(frozen=True)
class Variant:
    """One micro-variant: its kind, text, token ids, distance to the original, and the answer to learn."""

    kind: str
    prompt: str
    answer: str
    prompt_ids: tuple[int, ...]  # encode_prompt(prompt): what the hive sees
    answer_ids: tuple[int, ...]  # the answer's tokens, without EOS
    distance: int  # token edit distance of prompt_ids to the original prompt's ids
    detail: str  # what changed, in words

    @property
    def example(self) -> tuple[str, str]:
        """The ``(prompt, answer)`` pair :meth:`Hive.learn` takes."""
        return self.prompt, self.answer


def edit_distance(a: tuple[int, ...] | list[int], b: tuple[int, ...] | list[int]) -> int:
    """Levenshtein distance between two token sequences (insert, delete, substitute: 1 each)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]
