"""What learns in a tick's solve phase: the hive, or a baseline over the same engine.

Every method gets the same tasks — the swarm draws them (:meth:`Swarm.task_for`), so the
support examples of agent *i* at tick *t* are the same whatever learns from them — and
fills the tick's outcomes (and, for the hive, its proposals). The baselines of the
continual-learning literature are thin variations over :meth:`Hive.learn`:

    hive       the full stack: fast steps on agent/context levels, swarm proposals
    seq-lora   one shared LoRA level (a stack of one level), trained on the stream in order
    replay     seq-lora, with a fraction of each support batch drawn from past stages
    multitask  seq-lora's level, fed every task type mixed (the swarm assigns the types)

Budget: a hive agent's view moves ``agent.fast_steps`` times on its fast levels and once
on the swarm level per tick; a baseline takes ``steps`` (default ``fast_steps + 1``)
steps per tick on the same support examples.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol, final

from lorahive.mechanisms.aggregation import Proposal
from lorahive.runtime.agent import Outcome, as_answer, score, solve_all
from lorahive.suites.task import Example, Task

if TYPE_CHECKING:
    from lorahive.runtime.swarm import Swarm, TickContext

__all__ = ["HiveMethod", "Method", "Replay", "ReplayBuffer", "SeqLoRA"]


class Method(Protocol):
    """One tick's learning: read ``ctx.tasks``, fill ``ctx.outcomes`` (and ``ctx.proposals``)."""

    name: str

    def solve(self, swarm: Swarm, ctx: TickContext) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """Plain-JSON state needed for an exact resume (empty when stateless)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@final
class HiveMethod:
    """The full stack: agents solve on their fast levels and propose for the swarm level."""

    name = "hive"

    def solve(self, swarm: Swarm, ctx: TickContext) -> None:
        cfg = swarm.cfg
        ctx.outcomes = solve_all(swarm.hive, ctx.tasks, cfg.agent, cfg.swarm_level, keep_context=ctx.notes.get("context_modes", {}))
        for name, out in ctx.outcomes.items():
            if out.proposal is not None:
                a = swarm.agents[name]
                ctx.proposals.append(Proposal(name, cfg.swarm_level, ctx.tick, out.proposal, out.quality, a.reputation))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


@final
class SeqLoRA:
    """Plain LoRA fine-tuning of one level on whatever tasks the tick brings.

    All agents' support examples form one batch; the level is shared, so each step follows
    the mean of the agents' losses. Quality is scored on the query parts after learning.
    """

    def __init__(self, level: str, steps: int, name: str = "seq-lora") -> None:
        if steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {steps}")
        self.level, self.steps, self.name = level, steps, name

    def solve(self, swarm: Swarm, ctx: TickContext) -> None:
        support = {a: [(p, as_answer(ans)) for p, ans in t.support] for a, t in ctx.tasks.items()}
        losses = swarm.hive.learn(support, steps=self.steps, levels=[self.level])
        quality = score(swarm.hive, ctx.tasks)
        ctx.outcomes = {a: Outcome(quality[a], losses[a], None) for a in ctx.tasks}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


class ReplayBuffer:
    """A reservoir of past (task type, prompt, answer) examples (Vitter's algorithm R).

    Draws are seeded by the caller, so a run's buffer depends only on its seed and the
    examples it saw; the buffer is plain JSON for checkpoints.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be ≥ 1, got {capacity}")
        self.capacity = capacity
        self.items: list[tuple[str, str, str]] = []
        self.seen = 0

    def add(self, task_type: str, examples: list[Example], rng: random.Random) -> None:
        for p, a in examples:
            self.seen += 1
            if len(self.items) < self.capacity:
                self.items.append((task_type, p, a))
            else:
                j = rng.randrange(self.seen)
                if j < self.capacity:
                    self.items[j] = (task_type, p, a)

    def sample(self, k: int, exclude: str, rng: random.Random) -> list[Example]:
        """Up to ``k`` examples of task types other than ``exclude`` (past stages)."""
        pool = [(p, a) for t, p, a in self.items if t != exclude]
        return rng.sample(pool, min(k, len(pool)))

    def state_dict(self) -> dict[str, Any]:
        return {"items": [list(x) for x in self.items], "seen": self.seen}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.items = [(str(t), str(p), str(a)) for t, p, a in state["items"]]
        self.seen = int(state["seen"])


@final
class Replay:
    """Experience replay around an inner method: part of each support set comes from the past.

    For every agent, ``round(fraction · support)`` of its support examples are replaced by
    examples of past stages drawn from the buffer (none before there is a past), so the
    number of examples and steps stays that of the inner method. After learning, the tick's
    own (unreplaced) support examples join the buffer.
    """

    def __init__(self, inner: Method, fraction: float, capacity: int, seed: int, name: str = "replay") -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        self.inner, self.fraction, self.seed, self.name = inner, fraction, seed, name
        self.buffer = ReplayBuffer(capacity)

    def solve(self, swarm: Swarm, ctx: TickContext) -> None:
        own = dict(ctx.tasks)
        mixed: dict[str, Task] = {}
        replayed: dict[str, int] = {}
        for i, (agent, task) in enumerate(own.items()):
            k = round(self.fraction * len(task.support))
            rng = random.Random(f"{self.seed}/replay/{ctx.tick}/{i}")
            past = self.buffer.sample(k, task.task_type, rng) if k else []
            support = past + task.support[len(past) :]
            mixed[agent] = replace(task, support=support)
            replayed[agent] = len(past)
        ctx.tasks = mixed
        self.inner.solve(swarm, ctx)
        ctx.tasks = own
        ctx.notes["replayed"] = replayed
        rng = random.Random(f"{self.seed}/buffer/{ctx.tick}")
        for task in own.values():
            self.buffer.add(task.task_type, task.support, rng)

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "inner": self.inner.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.inner.load_state_dict(state.get("inner", {}))
