"""How a learning call's rows are laid out: passes of whole agents, and the anchor's base log-probabilities kept per row.

A tick's fast steps and proposals run every agent's support rows; :func:`split` groups whole
agents into passes of at most N rows (``agent.rows_per_pass``), whose gradients
:class:`~lorahive.runtime.hive.Hive` adds up before one step. :class:`BaseMemo` keeps the
foundation's log-probabilities at the anchor positions per row text, so the steps and
proposals of a tick pay one base pass per row however its rows are grouped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from lorahive.learning.batching import Batch

Examples = Mapping[str, Sequence[tuple[str, str]]]
Row = tuple[str, str]


@dataclass(frozen=True)
class Pass:
    """One forward's worth of a learning call: whole agents' rows packed, and the anchor's base log-probabilities."""

    batch: Batch
    owners: list[str]  # each row's agent
    names: list[str]  # the pass's agents, in order
    base: torch.Tensor | None
    keys: list[tuple[str, str, str]]  # each row's (agent, prompt, answer), for row pins (core/pins.py)


def check_examples(examples: Examples) -> Examples:
    """``examples`` if it is a non-empty mapping (agent -> examples), else a ValueError."""
    if not isinstance(examples, Mapping) or not examples:
        raise ValueError("examples must be a non-empty mapping {agent: [(prompt, answer), ...]}")
    return examples


def split(examples: Examples, rows: int | None) -> list[Examples]:
    """Whole agents in order, grouped so a group holds at most ``rows`` examples (an agent with more is a group alone; ``None``: one group)."""
    if rows is None:
        return [examples]
    if rows < 1:
        raise ValueError(f"rows_per_pass must be ≥ 1 or None, got {rows}")
    groups: list[dict[str, Sequence[Row]]] = [{}]
    held = 0
    for agent, exs in examples.items():
        if groups[-1] and held + len(exs) > rows:
            groups.append({})
            held = 0
        groups[-1][agent] = exs
        held += len(exs)
    return list(groups)


class BaseMemo:
    """The base model's log-probabilities at the anchor positions, kept per row text (they depend on nothing else).

    A batch of rows already seen costs nothing (the same batch: the kept tensor; other rows
    seen: their parts concatenated). What is kept is dropped when the first pass of a call
    brings a row not seen — a new tick's rows — or the positions per row change.
    """

    def __init__(self) -> None:
        self._rows: dict[Row, torch.Tensor] = {}  # row -> (n, V), a view of its batch's tensor
        self._batches: dict[tuple[Row, ...], torch.Tensor] = {}
        self._positions = 0

    def get(self, rows: list[Row], positions: int, batch: Batch, compute: Callable[[], torch.Tensor], first: bool) -> torch.Tensor:
        """The rows' base log-probabilities (M, V) in batch order, computed by ``compute()`` only if some row is new."""
        key = tuple(rows)
        if positions == self._positions:
            if key in self._batches:
                return self._batches[key]
            if all(r in self._rows for r in rows):
                return torch.cat([self._rows[r] for r in rows])
        base = compute()
        if first or positions != self._positions:
            self.clear()
            self._positions = positions
        self._rows.update(zip(rows, base.split(list(batch.anchor_rows)), strict=True))
        self._batches[key] = base
        return base

    def clear(self) -> None:
        """Drop what is kept: the next call pays its base pass."""
        self._rows, self._batches = {}, {}
