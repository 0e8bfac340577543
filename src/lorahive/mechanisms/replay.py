"""Replay of past successes (seed 004 §B; DESIGN.md §3) into the fast steps and the proposals.

Memory: one reservoir per agent (``agent_capacity`` examples) and one for the swarm
(``swarm_capacity``), each holding (task type, prompt, answer) of support examples from
ticks where the agent cleared the quality bar (Vitter's algorithm R, seeded by the run's
seed and the tick, so a resumed run draws the same). Bounded: at most
``agents × agent_capacity + swarm_capacity`` examples, whatever the length of the stream;
the ledger's ``bytes`` field says how much text that is.

``draw`` phase: with probability ``probability`` per agent and tick, the last
``round(fraction × support)`` support examples are replaced by (``mode: add``: the support is
extended by as many) distinct past examples of *other* task types — a share ``swarm_share`` from the swarm's buffer (what any agent succeeded at),
the rest from the agent's own, each falling back on the other when it runs short. The
agents then learn from, score and propose on the mixed support as usual, so replay reaches
both the fast levels and the swarm proposals; the query examples (the quality) are the
tick's own. ``record`` phase: the tick's own (unreplaced) support of every agent at or above
the bar joins the buffers.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from typing import Any, final

from lorahive.config import ReplayConfig
from lorahive.mechanisms.base import Action, Example, TickView

__all__ = ["Reservoir", "SuccessReplay"]

Item = tuple[str, str, str]  # task type, prompt, answer


class Reservoir:
    """A bounded uniform sample of everything added (algorithm R)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be ≥ 1, got {capacity}")
        self.capacity = capacity
        self.items: list[Item] = []
        self.seen = 0

    def add(self, item: Item, rng: random.Random) -> None:
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(item)
        else:
            j = rng.randrange(self.seen)
            if j < self.capacity:
                self.items[j] = item

    def sample(self, k: int, exclude: str, rng: random.Random, skip: Collection[Item] = ()) -> list[Item]:
        """Up to ``k`` distinct examples (with their task types) of types other than ``exclude``, none of them in ``skip``.

        Distinct by text: an example stored under two types is drawn with the first.
        """
        first: dict[Example, Item] = {}
        for t, p, a in self.items:
            if t != exclude and (p, a) not in first:
                first[(p, a)] = (t, p, a)
        skipped = {(p, a) for _, p, a in skip}
        pool = [x for e, x in first.items() if e not in skipped]
        return rng.sample(pool, min(k, len(pool)))

    def nbytes(self) -> int:
        return sum(len(t) + len(p) + len(a) for t, p, a in self.items)

    def state_dict(self) -> dict[str, Any]:
        return {"items": [list(x) for x in self.items], "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.items = [(str(t), str(p), str(a)) for t, p, a in state.get("items", [])][: self.capacity]
        self.seen = int(state.get("seen", len(self.items)))


@final
class SuccessReplay:
    """Per-agent and swarm buffers of past successes, mixed into the support (``draw``, ``record``)."""

    name = "replay"
    phases: tuple[str, ...] = ("draw", "record")

    def __init__(self, cfg: ReplayConfig, agents: list[str]) -> None:
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.agents = {a: Reservoir(cfg.agent_capacity) for a in agents}
        self.swarm = Reservoir(cfg.swarm_capacity)
        self._own: dict[str, list[Example]] = {}  # this tick's own support, kept from draw to record
        self._replayed = 0

    def run(self, view: TickView) -> Action | None:
        return self._draw(view) if view.phase == "draw" else self._record(view)

    def _draw(self, view: TickView) -> Action | None:
        self._own = {a: list(exs) for a, exs in view.support.items()}
        self._replayed = 0
        replayed: dict[str, dict[Example, str]] = {}  # agent -> replayed example -> its task type
        for agent, exs in view.support.items():
            rng = random.Random(f"{view.seed}/replay/{view.tick}/{agent}")
            k = round(self.cfg.fraction * len(exs))
            if not k or rng.random() >= self.cfg.probability:
                continue
            past = self._sample(agent, view.task_types.get(agent, ""), k, rng)
            if past:
                kept = exs if self.cfg.mode == "add" else exs[: len(exs) - len(past)]
                view.support[agent] = kept + [(p, a) for _, p, a in past]
                replayed[agent] = {(p, a): t for t, p, a in past}
                self._replayed += len(past)
        view.shared["replayed"] = replayed  # context modes pin these rows to their own type's mode
        return None

    def _sample(self, agent: str, current: str, k: int, rng: random.Random) -> list[Item]:
        own = self.agents.get(agent)
        k_swarm = round(self.cfg.swarm_share * k)
        got = self.swarm.sample(k_swarm, current, rng)
        if own is not None:
            got += own.sample(k - len(got), current, rng, skip=got)  # the agent's successes are in both buffers
        if len(got) < k:  # the agent's own buffer ran short: fill from the swarm's, without repeats
            taken = {(p, a) for _, p, a in got}
            more = [x for x in self.swarm.sample(k, current, rng) if (x[1], x[2]) not in taken]
            got += more[: k - len(got)]
        return got

    def _record(self, view: TickView) -> Action | None:
        rng = random.Random(f"{view.seed}/replay-store/{view.tick}")
        stored = 0
        for agent, exs in self._own.items():
            if view.quality.get(agent, -1.0) < view.quality_bar:
                continue
            task_type = view.task_types.get(agent, "")
            buf = self.agents.setdefault(agent, Reservoir(self.cfg.agent_capacity))
            for p, a in exs:
                buf.add((task_type, p, a), rng)
                self.swarm.add((task_type, p, a), rng)
                stored += 1
        self._own = {}
        detail = {
            "replayed": self._replayed,
            "stored": stored,
            "buffer": {"agents": sum(len(b.items) for b in self.agents.values()), "swarm": len(self.swarm.items)},
            "bytes": sum(b.nbytes() for b in self.agents.values()) + self.swarm.nbytes(),
        }
        return Action("replay", detail)

    def state_dict(self) -> dict[str, Any]:
        return {"agents": {a: b.state_dict() for a, b in self.agents.items()}, "swarm": self.swarm.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for a, s in state.get("agents", {}).items():
            self.agents.setdefault(a, Reservoir(self.cfg.agent_capacity)).load_state_dict(s)
        self.swarm.load_state_dict(state.get("swarm", {}))
