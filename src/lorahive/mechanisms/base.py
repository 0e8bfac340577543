"""The mechanism protocol (DESIGN.md §7): what a mechanism is handed, what it returns.

A tick is a fixed sequence of named :data:`PHASES`. A :class:`Mechanism` names the phase(s)
it runs in and gets one :class:`TickView` per phase it runs in: the tick's proposals, one
typed :class:`Decision` per proposal once aggregation has run, the level states, the model
core (for its write primitives only) and this tick's applied updates. It returns an
:class:`Action` (what it did, recorded by the framework as a ledger ``events`` row of kind
``mechanism:<name>``) or ``None``. Its :meth:`Mechanism.state_dict` is checkpointed and
restored by the framework: plain JSON values go to the run state, tensors to the checkpoint's
extra tensors. Mechanisms never import :mod:`lorahive.runtime`.

The shared value types of aggregation (:data:`Delta`, :class:`Proposal`, :class:`Decision`,
:class:`Aggregate`) live here too, so that a mechanism needs this module and nothing above it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from lorahive.mechanisms.peers import ALONE, Peers

if TYPE_CHECKING:
    from lorahive.core import HiveCore, LevelState

__all__ = ["PHASES", "Action", "Activity", "Example", "Aggregate", "Decision", "Delta", "Mechanism", "Proposal", "TickView"]

#: The tick's phases, in order (DESIGN.md §2; spelled out in ``Swarm.tick``).
PHASES = ("draw", "solve", "budget", "compose", "apply", "detect", "migrate", "drain", "decay", "health", "record")

#: A delta (or gradient) per bank parameter, keyed by parameter name.
Delta = dict[str, torch.Tensor]

#: A (prompt, answer) example.
Example = tuple[str, str]

#: Per level: each slot's pattern activity (S, r) and which slots had rows (S,) (``Hive.activity``).
Activity = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Proposal:
    """One agent's proposed change to a shared level at one tick."""

    agent: str
    level: str
    tick: int
    delta: Delta
    quality: float = 1.0
    reputation: float = 1.0


@dataclass(frozen=True)
class Decision:
    """What aggregation decided about one proposal (one ``proposals`` row of the ledger).

    ``norm`` is the proposal's global L2 norm as submitted (``None`` when not finite);
    ``cosine`` its cosine to the swarm's running direction (``None`` before there is one);
    ``weight`` the factor by which its raw delta entered the update (the nominal 1/n for
    median and trimmed mean); ``clip_scale`` and ``resonance`` the factors the clipping and
    resonance wrappers applied (``None`` where no such wrapper ran).
    """

    agent: str
    level: str
    tick: int
    accepted: bool
    reason: str = ""
    norm: float | None = None
    cosine: float | None = None
    weight: float | None = None
    quality: float | None = None
    reputation: float | None = None
    clip_scale: float | None = None
    resonance: float | None = None

    @property
    def decision(self) -> str:
        """``'accepted'`` or ``'rejected'``, as the ledger spells it."""
        return "accepted" if self.accepted else "rejected"


@dataclass(frozen=True)
class Aggregate:
    """An aggregator's result: the update (``None``: no update this tick), one decision per proposal, in order, and metrics.

    ``metrics`` holds ``strategy``, ``n_proposals``, ``n_accepted``, ``n_rejected``,
    ``n_failures``, ``failures``, ``norm`` (of the update, or ``None``) and, when there is no
    update, ``reason``.
    """

    update: Delta | None
    decisions: list[Decision]
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Action:
    """What a mechanism did in one phase: a short ``kind`` and a JSON-able ``detail``."""

    kind: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class TickView:
    """One phase of one tick as a mechanism sees it.

    Read-only but for ``proposals`` and ``support``: a ``solve``-phase mechanism may edit the
    proposals list in place (before aggregation sees it), a ``draw``-phase mechanism each
    agent's support examples (before the agents learn from them). Levels are written through
    ``core``'s primitives only (``step``, ``add_delta``, ``decay_toward_init``, ``reset``) and
    ``states``' fields. ``decisions`` is empty until the compose phase's aggregation has run;
    ``updates`` holds this tick's applied update per level, empty until the apply phase;
    ``quality`` each agent's query quality, empty until the solve phase has run.
    ``activity(levels)`` measures pattern activity on this tick's support examples (one
    forward pass, cached per tick, over every process's agents; ``None`` outside a swarm).
    ``peers`` are the processes of the run: a mechanism reads the slots this process holds
    and gathers what the others read (:mod:`lorahive.mechanisms.peers`).
    ``learn(examples, steps, levels)`` takes ``steps`` learning steps of ``levels`` on
    ``{agent: [(prompt, answer)]}`` through the hive's batched path (each agent's rows on its
    slots, as the fast steps learn; nothing read back); ``None`` outside a swarm.
    """

    tick: int
    phase: str
    proposals: list[Proposal]
    decisions: Sequence[Decision]
    reputations: Mapping[str, float]  # agent -> reputation, in the swarm's agent order
    states: Mapping[str, LevelState]
    core: HiveCore
    updates: Mapping[str, Delta] = field(default_factory=dict)
    support: dict[str, list[Example]] = field(default_factory=dict)  # agent -> this tick's support examples
    task_types: Mapping[str, str] = field(default_factory=dict)  # agent -> its task type this tick
    quality: Mapping[str, float] = field(default_factory=dict)  # agent -> query quality this tick
    quality_bar: float = 0.0
    activity: Callable[[Sequence[str]], Activity] | None = None
    seed: int = 0
    shared: dict[str, Any] = field(default_factory=dict)  # the tick's notes between mechanisms (e.g. conflicts)
    peers: Peers = ALONE
    learn: Callable[[Mapping[str, Sequence[Example]], int, Sequence[str]], None] | None = None


class Mechanism(Protocol):
    """A small, replaceable component run by the tick in its phase(s) (DESIGN.md §7)."""

    #: Unique among a swarm's mechanisms; names its ledger events (``mechanism:<name>``) and its state.
    name: str
    #: The phases it runs in, each one of :data:`PHASES`.
    phases: tuple[str, ...]
    #: A disabled mechanism is not run (its state is still checkpointed).
    enabled: bool

    def run(self, view: TickView) -> Action | None:
        """Do this phase's work; say what was done, or ``None`` when nothing was."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """What an exact resume needs: plain JSON values and/or tensors (empty when stateless)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
