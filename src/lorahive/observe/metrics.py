"""Continual-learning metrics (ACC, BWT, FWT over an accuracy matrix) and held-out perplexity.

DESIGN.md §4. Tasks 1..T are learned in order. The accuracy matrix R has T+1 rows and T
columns: row 0 holds the accuracy b_j on each task *before any learning*, row i (1 ≤ i ≤ T)
the accuracy on each task j *after learning task i*. With R_{i,j} = R[i][j] (columns
1-based, as in the paper) the metrics of Lopez-Paz & Ranzato (2017, "Gradient Episodic Memory
for Continual Learning", §4), which Avalanche's ``StreamBWT`` / ``StreamForwardTransfer``
compute the same way, are::

    ACC = 1/T     · Σ_{j=1..T}   R_{T,j}
    BWT = 1/(T−1) · Σ_{j=1..T−1} (R_{T,j} − R_{j,j})
    FWT = 1/(T−1) · Σ_{j=2..T}   (R_{j−1,j} − b_j)        b_j = R_{0,j}

BWT < 0 is forgetting; FWT > 0 means earlier tasks helped a task before it was learned.
With a single task, BWT and FWT are undefined and reported as NaN.

Perplexity measures retention of general language ability: the exponentiated mean
next-token NLL of held-out text, cut into windows of a token budget, under one agent's view.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

import torch

from lorahive.learning.batching import IGNORE, Batch
from lorahive.learning.objective import answer_nll

if TYPE_CHECKING:  # annotations only: the hive is passed in, so no import cycle with runtime
    from lorahive.runtime.hive import Hive

__all__ = [
    "AccuracyMatrix",
    "CLMetrics",
    "acc",
    "bwt",
    "cl_metrics",
    "fwt",
    "heldout_text",
    "perplexity",
]


# ---------------------------------------------------------------------- ACC / BWT / FWT
def _matrix(r: Sequence[Sequence[float]] | torch.Tensor) -> torch.Tensor:
    m = torch.as_tensor(r, dtype=torch.float64)
    if m.dim() != 2 or m.shape[1] < 1 or m.shape[0] != m.shape[1] + 1:
        raise ValueError(f"R must be (T+1, T): a before-learning row, then one row per learned task; got shape {tuple(m.shape)}")
    if torch.isnan(m).any():
        raise ValueError("R has missing (NaN) entries; fill every row before computing metrics")
    return m


def acc(r: Sequence[Sequence[float]] | torch.Tensor) -> float:
    """Average accuracy on all tasks after learning the last one."""
    m = _matrix(r)
    return float(m[-1].mean())


def bwt(r: Sequence[Sequence[float]] | torch.Tensor) -> float:
    """Backward transfer: mean change on tasks 1..T−1 from just after learning each to the end."""
    m = _matrix(r)
    t = m.shape[1]
    if t < 2:
        return math.nan
    j = torch.arange(t - 1)
    return float((m[t, j] - m[j + 1, j]).mean())


def fwt(r: Sequence[Sequence[float]] | torch.Tensor) -> float:
    """Forward transfer: mean gain on tasks 2..T just before learning each, over before learning."""
    m = _matrix(r)
    t = m.shape[1]
    if t < 2:
        return math.nan
    j = torch.arange(1, t)
    return float((m[j, j] - m[0, j]).mean())


@dataclass(frozen=True)
class CLMetrics:
    """ACC, BWT and FWT of one accuracy matrix (see the module docstring for the formulas)."""

    acc: float
    bwt: float
    fwt: float

    def to_dict(self) -> dict[str, float]:
        return {"ACC": self.acc, "BWT": self.bwt, "FWT": self.fwt}


def cl_metrics(r: Sequence[Sequence[float]] | torch.Tensor) -> CLMetrics:
    return CLMetrics(acc=acc(r), bwt=bwt(r), fwt=fwt(r))


class AccuracyMatrix:
    """R filled while a stream of tasks runs: ``record(stage, task, accuracy)``.

    Stage 0 is before any learning; stage i is after learning ``tasks[i-1]``.
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        if not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be a non-empty list of distinct names, got {list(tasks)}")
        self.tasks = list(tasks)
        self.values = torch.full((len(tasks) + 1, len(tasks)), math.nan, dtype=torch.float64)  # (T+1, T)

    def record(self, stage: int, task: str, accuracy: float) -> None:
        if not 0 <= stage <= len(self.tasks):
            raise ValueError(f"stage must be in [0, {len(self.tasks)}], got {stage}")
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; tasks are {self.tasks}")
        if not math.isfinite(accuracy):
            raise ValueError(f"accuracy of {task!r} at stage {stage} is not finite: {accuracy}")
        self.values[stage, self.tasks.index(task)] = float(accuracy)

    def complete(self) -> bool:
        return not bool(torch.isnan(self.values).any())

    def metrics(self) -> CLMetrics:
        return cl_metrics(self.values)

    def to_dict(self) -> dict:
        """Plain dict for ``metrics.json``: tasks, R (NaN as None), and the metrics when complete."""
        rows = [[None if math.isnan(v) else v for v in row] for row in self.values.tolist()]
        out: dict = {"tasks": list(self.tasks), "R": rows}
        if self.complete():
            out.update(self.metrics().to_dict())
        return out


# ---------------------------------------------------------------------- perplexity
def heldout_text() -> str:
    """The held-out text slice shipped in the package (WikiText-2; see data/text/PROVENANCE.md)."""
    return resources.files("lorahive").joinpath("data/text/heldout.txt").read_text(encoding="utf-8")


def _windows(ids: list[int], window: int, pad: int) -> Batch:
    """Consecutive windows of ``window`` tokens as one right-padded batch; every token after a
    window's first is a target. A last window of a single token predicts nothing and is dropped."""
    chunks = [ids[i : i + window] for i in range(0, len(ids), window)]
    chunks = [c for c in chunks if len(c) > 1]
    width = max(len(c) for c in chunks)
    x = torch.tensor([c + [pad] * (width - len(c)) for c in chunks])  # (W, T)
    mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunks])  # (W, T)
    labels = x.masked_fill(mask == 0, IGNORE)
    return Batch(x, mask, (mask.cumsum(-1) - 1).clamp(min=0), labels)


@torch.no_grad()
def perplexity(
    hive: Hive,
    text: str,
    agent: str,
    levels: Sequence[str] | None = None,
    window: int = 256,
    batch_size: int = 8,
    max_tokens: int | None = None,
) -> float:
    """exp(mean next-token NLL) of ``text`` under ``agent``'s view of the hive.

    The text is tokenized without special tokens and cut into consecutive, non-overlapping
    windows of ``window`` tokens (at most the hive's context); each window is scored as a
    plain causal LM and ``batch_size`` windows run at once. ``levels`` keeps only those
    levels active (default all; ``[]`` is the bare base model). ``max_tokens`` keeps only
    the text's first tokens (a fixed budget, so runs of any model size cost the same).
    """
    if window < 2:
        raise ValueError(f"window must be ≥ 2 tokens, got {window}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    window = min(window, hive.max_length)
    ids = list(hive.tokenizer(text, add_special_tokens=False)["input_ids"])[:max_tokens]
    if len(ids) < 2:
        raise ValueError(f"text has {len(ids)} token(s); perplexity needs at least 2")
    pad = hive.tokenizer.pad_token_id or 0
    batch = _windows(ids, window, int(pad))
    total, count = 0.0, 0.0
    for start in range(0, batch.input_ids.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        assert batch.labels is not None
        part = Batch(batch.input_ids[rows], batch.attention_mask[rows], batch.position_ids[rows], batch.labels[rows]).to(hive.device)
        with hive.routing.use(hive.route([agent] * part.input_ids.shape[0], levels)):
            nll, n = answer_nll(hive.model, part)  # (b,), (b,)
        total += float(nll.double().sum())
        count += float(n.sum())
    return math.exp(total / count)
