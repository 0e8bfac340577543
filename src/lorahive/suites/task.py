"""Tasks and their scorers.

A *task* (DESIGN.md §2) is a set of examples of one task type, split into a *support* part
that an agent learns from and a *query* part it is scored on. Quality is the fraction of
query answers the scorer accepts: exact match of the normalized answer by default, or — when
the task has a closed label set, as the CL-benchmark tasks do — match after mapping the
free-form prediction onto that label set, so "Sports." and "sports news" both count as
``Sports`` the way the O-LoRA/TreeLoRA evaluation scripts count them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, final

__all__ = [
    "Example",
    "ExactMatch",
    "LabelMatch",
    "Scorer",
    "Task",
    "map_to_label",
    "normalize",
]

#: One example: (prompt, answer).
Example = tuple[str, str]

_SPACE = re.compile(r"\s+")
_TRAILING_PUNCT = ".,;:!?\"'`)]}"


def normalize(s: str) -> str:
    """Lowercase, strip, collapse runs of whitespace, strip trailing punctuation."""
    s = _SPACE.sub(" ", s.strip().lower())
    return s.rstrip(_TRAILING_PUNCT).rstrip()


def map_to_label(prediction: str, labels: Sequence[str]) -> str | None:
    """Map a free-form prediction onto a label set, or ``None`` when it names no label.

    An exact normalized match wins; otherwise the longest label the normalized prediction
    starts with (longest, so "very negative, ..." maps to ``very negative`` and not to a
    shorter label that happens to be a prefix of it).
    """
    pred = normalize(prediction)
    normed = [(normalize(label), label) for label in labels]
    for n, label in normed:
        if pred == n:
            return label
    starts = [(len(n), label) for n, label in normed if n and pred.startswith(n)]
    return max(starts, key=lambda t: t[0])[1] if starts else None


class Scorer(Protocol):
    """Scores one prediction against its reference answer: 1.0 correct, 0.0 wrong."""

    def __call__(self, prediction: str, answer: str) -> float: ...


@final
class ExactMatch:
    """Exact match of the normalized strings."""

    def __call__(self, prediction: str, answer: str) -> float:
        return float(normalize(prediction) == normalize(answer))

    def __repr__(self) -> str:
        return "ExactMatch()"


@final
class LabelMatch:
    """Map the prediction onto a closed label set, then compare with the answer's label."""

    def __init__(self, labels: Sequence[str]) -> None:
        if not labels:
            raise ValueError("LabelMatch needs at least one label")
        self.labels = tuple(labels)

    def __call__(self, prediction: str, answer: str) -> float:
        label = map_to_label(prediction, self.labels)
        return float(label is not None and normalize(label) == normalize(answer))

    def __repr__(self) -> str:
        return f"LabelMatch({list(self.labels)!r})"


@dataclass(frozen=True)
class Task:
    """A task of one type: examples to learn from (support) and to be scored on (query)."""

    task_type: str
    support: list[Example]
    query: list[Example]
    labels: tuple[str, ...] | None = None
    scorer: Scorer = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if not self.task_type:
            raise ValueError("task_type must be a non-empty string")
        if not self.query:
            raise ValueError(f"task {self.task_type!r} has no query examples to score")
        if self.scorer is None:
            default: Scorer = LabelMatch(self.labels) if self.labels else ExactMatch()
            object.__setattr__(self, "scorer", default)

    @property
    def query_prompts(self) -> list[str]:
        return [p for p, _ in self.query]

    @property
    def query_answers(self) -> list[str]:
        return [a for _, a in self.query]

    def score(self, predictions: Sequence[str]) -> float:
        """Quality: the mean score of ``predictions`` against the query answers, in order."""
        if len(predictions) != len(self.query):
            raise ValueError(f"got {len(predictions)} predictions for {len(self.query)} query examples")
        return sum(self.scorer(p, a) for p, (_, a) in zip(predictions, self.query, strict=True)) / len(self.query)
