"""The processes a run is spread over, as a mechanism sees them (docs/scaling.md).

In a run over several ranks, the per-agent and per-task slots of agent *i* are trained and
held by one process, the one that *hosts* slot *i*; shared levels, level states and every
mechanism's state are replicated. A mechanism that reads slots therefore reads the ones
this process holds (:func:`held`) and gathers what the others read of theirs
(:func:`gather_rows`, :func:`written`); it then decides on the gathered values, which are the
same on every process, so every process takes the same decisions and makes the same edits
to shared levels. Slots of per-agent and per-task levels are edited by their host only.

In one process (:data:`ALONE`) the process hosts every slot and a gather returns what it
is given: the helpers reduce to the single-process computation, bit for bit.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, final

import torch

from lorahive.adapters.probe import add_totals

if TYPE_CHECKING:
    from lorahive.core import HiveCore

__all__ = ["ALONE", "Alone", "Peers", "add_up", "gather_rows", "held", "written"]

K = TypeVar("K", bound=Hashable)


class Peers(Protocol):
    """Which slots this process hosts, and a gather over every process of the run."""

    def hosts(self, slot: int) -> bool:
        """Whether this process hosts ``slot`` of per-agent and per-task levels (slot *i* is agent *i*'s)."""
        ...

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in process order, on every process (tensors on this process's device)."""
        ...


@final
class Alone:
    """One process: it hosts every slot."""

    def hosts(self, slot: int) -> bool:
        return True

    def gather(self, obj: Any) -> list[Any]:
        return [obj]


ALONE = Alone()


def _shared(core: HiveCore, level: str) -> bool:
    return core.stack.get(level).scope == "shared"


def held(peers: Peers, core: HiveCore, level: str, slots: Sequence[int]) -> list[int]:
    """The slots of ``slots`` this process holds: every slot of a shared level, its hosted slots of the others."""
    return list(slots) if _shared(core, level) else [s for s in slots if peers.hosts(s)]


def written(peers: Peers, core: HiveCore, levels: Sequence[str]) -> dict[str, list[int]]:
    """Each level's written slots (``HiveCore.written``) over every process, sorted: one gather for all the levels."""
    out = {lv: held(peers, core, lv, sorted(core.written[lv])) for lv in levels}
    spread = [lv for lv in levels if not _shared(core, lv)]
    if spread:
        parts = peers.gather({lv: out[lv] for lv in spread})
        for lv in spread:
            out[lv] = sorted(s for part in parts for s in part[lv])
    return out


def gather_rows(peers: Peers, core: HiveCore, level: str, slots: Sequence[int], rows: Mapping[K, torch.Tensor]) -> tuple[list[int], dict[K, torch.Tensor]]:
    """Rows of this process's ``slots`` (row ``i`` of each tensor is ``slots[i]``) → the rows of every process's, in slot order.

    A shared level is held everywhere: its rows are returned as given, without a gather.
    """
    if _shared(core, level):
        return list(slots), dict(rows)
    parts = [(list(s), dict(r)) for s, r in peers.gather((list(slots), dict(rows))) if s]
    if len(parts) <= 1:
        return parts[0] if parts else ([], {})
    every = [slot for got, _ in parts for slot in got]
    order = sorted(range(len(every)), key=every.__getitem__)
    out: dict[K, torch.Tensor] = {}
    for key in parts[0][1]:
        joined = torch.cat([r[key] for _, r in parts])
        out[key] = joined.index_select(0, torch.tensor(order, device=joined.device))
    return [every[i] for i in order], out


def add_up(peers: Peers, totals: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """Per-level pairs of tensors summed over the processes, in process order (``None``: no process had any)."""
    parts = [p for p in peers.gather(None if totals is None else dict(totals)) if p is not None]
    if len(parts) <= 1:
        return parts[0] if parts else None
    start: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    return functools.reduce(add_totals, parts, start)
