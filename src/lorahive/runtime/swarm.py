"""The swarm and its tick: one round of the system, in a fixed order (DESIGN.md §2, seed 004 §G).

A tick is spelled out in :meth:`Swarm.tick`, top to bottom, one named phase each:

    solve    agents solve their tasks (fast steps, scoring, proposals), batched
    budget   entropy budget adjusts thresholds
    compose  proposals become one swarm update (validation, resonance, clipping, reputation)
    apply    the update is applied with the swarm level's optimizer
    detect   stable patterns are detected
    migrate  migrations queue under bandwidth
    drain    queues drain
    decay    free patterns decay toward their init snapshot
    health   health metrics
    record   the ledger commits the tick

Mechanisms plug into a phase with :meth:`Swarm.plug`; phases with nothing plugged in pass.
What learns in the solve phase is the run's method (:mod:`lorahive.runtime.methods`): the
hive, or a baseline over the same engine; in a stream run the schedule
(:mod:`lorahive.runtime.stream`) sets each agent's task type before the tasks are drawn.
The apply phase credits the swarm level's change to the accepted proposals
(:class:`~lorahive.observe.influence.SwarmAttribution`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lorahive.config import RunConfig
from lorahive.mechanisms.aggregation import Aggregator, Delta, Metrics, Proposal, flatten
from lorahive.mechanisms.compose import build_aggregator
from lorahive.observe.influence import SwarmAttribution, projection_contributions
from lorahive.observe.ledger import Ledger
from lorahive.runtime.agent import Agent, Outcome
from lorahive.runtime.hive import Hive
from lorahive.runtime.methods import Method
from lorahive.runtime.stream import Schedule, build_method
from lorahive.suites.cl import CLData, sample_task
from lorahive.suites.task import Task

PHASES = ("solve", "budget", "compose", "apply", "detect", "migrate", "drain", "decay", "health", "record")


@dataclass
class TickContext:
    """What one tick's phases share."""

    tick: int
    tasks: dict[str, Task] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    proposals: list[Proposal] = field(default_factory=list)
    update: Delta | None = None
    metrics: Metrics = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


Hook = Callable[["Swarm", TickContext], None]


class Swarm:
    """Agents working over one hive, improving its swarm level together."""

    def __init__(self, hive: Hive, cfg: RunConfig, data: dict[str, CLData], ledger: Ledger, aggregator: Aggregator | None = None, method: Method | None = None) -> None:
        self.hive, self.cfg, self.data, self.ledger = hive, cfg, data, ledger
        self.aggregator = aggregator or build_aggregator(cfg.aggregation)
        self.method = method or build_method(cfg)
        self.schedule = Schedule(cfg.stream) if cfg.stream is not None else None
        self.attribution = SwarmAttribution()
        types = sorted(data)
        names = [f"agent{i:0{len(str(cfg.agents - 1))}d}" for i in range(cfg.agents)]
        self.agents = {n: Agent(n, self.schedule.task_type(1, i) if self.schedule else types[i % len(types)]) for i, n in enumerate(names)}
        new = [n for n in names if n not in hive.agents]
        hive.add_agents(new)
        self.tick_no = 0
        self.accepted = 0
        self.rejected = 0
        self.hooks: dict[str, list[Hook]] = {p: [] for p in PHASES}

    def plug(self, phase: str, hook: Hook) -> None:
        """Run ``hook(swarm, ctx)`` in ``phase`` of every tick, after what is there already."""
        if phase not in self.hooks:
            raise ValueError(f"unknown phase {phase!r}; phases are {list(PHASES)}")
        self.hooks[phase].append(hook)

    # ------------------------------------------------------------------ the tick
    def tick(self) -> TickContext:
        ctx = TickContext(tick=self.tick_no + 1)
        self._solve(ctx)
        self._run("budget", ctx)
        self._compose(ctx)
        self._apply(ctx)
        for phase in ("detect", "migrate", "drain", "decay", "health"):
            self._run(phase, ctx)
        self._record(ctx)
        self.tick_no = ctx.tick
        return ctx

    def _run(self, phase: str, ctx: TickContext) -> None:
        for hook in self.hooks[phase]:
            hook(self, ctx)

    # ------------------------------------------------------------------ phases
    def task_for(self, agent: Agent, tick: int) -> Task:
        """A fresh task of the agent's type; the draw depends only on (seed, tick, agent)."""
        idx = list(self.agents).index(agent.name)
        seed = random.Random(f"{self.cfg.seed}/{tick}/{idx}").randrange(2**31)
        s = self.cfg.suite
        return sample_task(self.data[agent.task_type], s.support, s.query, seed, self.hive.tokenizer, s.max_prompt_tokens, balanced=s.balanced_support)

    def _solve(self, ctx: TickContext) -> None:
        if self.schedule is not None:
            for i, a in enumerate(self.agents.values()):
                a.task_type = self.schedule.task_type(ctx.tick, i)
        ctx.tasks = {n: self.task_for(a, ctx.tick) for n, a in self.agents.items()}
        self.method.solve(self, ctx)
        self._run("solve", ctx)

    def _compose(self, ctx: TickContext) -> None:
        ctx.update, ctx.metrics = self.aggregator.aggregate(ctx.tick, ctx.proposals)
        self._run("compose", ctx)

    def _apply(self, ctx: TickContext) -> None:
        decisions = {r["agent"]: r["decision"] for r in ctx.metrics.get("proposals", [])}
        self.accepted += sum(d == "accepted" for d in decisions.values())
        self.rejected += sum(d == "rejected" for d in decisions.values())
        ema = self.cfg.agent.reputation_ema
        for name, out in ctx.outcomes.items():
            cleared = out.quality >= self.cfg.agent.quality_bar
            self.agents[name].observe(cleared and decisions.get(name, "accepted") == "accepted", ema)
        if ctx.update is not None:
            before = self._swarm_weights()
            self.hive.apply_update(self.cfg.swarm_level, ctx.update)
            moved = float(torch.linalg.vector_norm(self._swarm_weights() - before))
            self._attribute(ctx, moved)
        self._run("apply", ctx)

    def _swarm_weights(self) -> torch.Tensor:
        return flatten({k: p.detach() for k, p in self.hive.core.level_params(self.cfg.swarm_level).items()})  # (D,)

    def _attribute(self, ctx: TickContext, moved: float) -> None:
        """Credit this tick's change of the swarm level (norm ``moved``) to the accepted proposals.

        Each accepted proposal enters the update as ``weight · delta``; its share of the change
        is its projection on the update over the update's norm (:func:`projection_contributions`),
        scaled so the tick's credits add up to the norm of the applied change. Masses decay by
        the level's own per-step weight decay, as its weights did.
        """
        records = ctx.metrics.get("proposals", [])
        used = {
            i: (p.agent, float(r["weight"]))
            for i, (p, r) in enumerate(zip(ctx.proposals, records, strict=False))
            if r["decision"] == "accepted" and r.get("weight")
        }
        updates = {str(i): flatten(ctx.proposals[i].delta) for i in used}
        proj = projection_contributions(updates, {str(i): w for i, (_, w) in used.items()})
        total = sum(proj.values())
        credit: dict[str, float] = {}
        if total > 0:
            for i, (agent, _) in used.items():
                credit[agent] = credit.get(agent, 0.0) + proj[str(i)] / total * moved
        spec = self.hive.stack.get(self.cfg.swarm_level)
        self.attribution.tick(credit, decay=1.0 - spec.step_size * spec.weight_decay)

    def _record(self, ctx: TickContext) -> None:
        with self.ledger.transaction():
            for name, out in ctx.outcomes.items():
                task = ctx.tasks[name]
                self.ledger.record_score(ctx.tick, name, task.task_type, "after", out.quality, len(task.query))
            self.ledger.record_aggregation(ctx.tick, self.cfg.swarm_level, ctx.metrics, applied=ctx.update is not None)
            self._run("record", ctx)

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {
            "tick": self.tick_no,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "agents_state": {n: {"task_type": a.task_type, "reputation": a.reputation, "solved": a.solved} for n, a in self.agents.items()},
            "attribution": self.attribution.state_dict(),
            "method": self.method.state_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.tick_no = int(state["tick"])
        self.accepted, self.rejected = int(state["accepted"]), int(state["rejected"])
        for n, s in state["agents_state"].items():
            a = self.agents[n]
            a.task_type, a.reputation, a.solved = s["task_type"], float(s["reputation"]), int(s["solved"])
        self.attribution.load_state_dict(state.get("attribution", {}))
        self.method.load_state_dict(state.get("method", {}))
