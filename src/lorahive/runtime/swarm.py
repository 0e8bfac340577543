"""The swarm and its tick: one round of the system, in a fixed order (DESIGN.md §2, seed 004 §G).

A tick is spelled out in :meth:`Swarm.tick`, top to bottom, one named phase each:

    draw     tasks are drawn; emergent inertia sets step sizes, replay mixes past successes in
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

Mechanisms (:class:`~lorahive.mechanisms.base.Mechanism`, built once from the config by
:func:`~lorahive.mechanisms.registry.build_mechanisms`) run in their phase(s) in registration
order, each handed a :class:`~lorahive.mechanisms.base.TickView`; every action one returns is
recorded as a ``mechanism:<name>`` ledger event in the tick's transaction, and every
mechanism's state (the aggregator's under ``aggregation``) is part of :meth:`Swarm.state` /
:meth:`Swarm.tensors`. Phases with no mechanism pass. The compose phase's own step is the
aggregator (:func:`~lorahive.mechanisms.compose.build_aggregator`): it returns a typed
:class:`~lorahive.mechanisms.base.Aggregate` that apply, attribution and the ledger read.

What learns in the solve phase is the run's method (:mod:`lorahive.runtime.methods`): the
hive, or a baseline over the same engine; in a stream run the schedule
(:mod:`lorahive.runtime.stream`) sets each agent's task type before the tasks are drawn.
The apply phase credits the swarm level's change to the accepted proposals
(:class:`~lorahive.observe.influence.SwarmAttribution`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import torch

from lorahive.adapters import mean_activity
from lorahive.config import RunConfig
from lorahive.mechanisms.aggregation import Aggregator, Metrics, flatten
from lorahive.mechanisms.base import (
    PHASES,
    Action,
    Activity,
    Aggregate,
    Decision,
    Delta,
    Mechanism,
    Proposal,
    TickView,
)
from lorahive.mechanisms.compose import build_aggregator
from lorahive.mechanisms.peers import ALONE, Peers, add_up, written
from lorahive.mechanisms.registry import (
    DEFAULT_FACTORIES,
    build_mechanisms,
    check_mechanisms,
    join_states,
    split_states,
)
from lorahive.mechanisms.resonance import DirectionTracker
from lorahive.observe.health import health_factory
from lorahive.observe.influence import SwarmAttribution, projection_contributions
from lorahive.observe.ledger import Ledger
from lorahive.runtime.agent import Agent, Outcome, as_answer
from lorahive.runtime.hive import Hive
from lorahive.runtime.methods import Method
from lorahive.runtime.stream import Schedule, build_method
from lorahive.suites.cl import CLData, sample_task
from lorahive.suites.task import Task

__all__ = ["PHASES", "Swarm", "TickContext"]


@dataclass
class TickContext:
    """What one tick's phases share."""

    tick: int
    tasks: dict[str, Task] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    proposals: list[Proposal] = field(default_factory=list)
    aggregate: Aggregate | None = None
    updates: dict[str, Delta] = field(default_factory=dict)  # level -> this tick's applied update
    actions: list[tuple[str, Action]] = field(default_factory=list)  # (mechanism, what it did), in order
    notes: dict[str, Any] = field(default_factory=dict)
    support: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # agent -> support examples (draw may edit)
    activity: Activity | None = None  # pattern activity on this tick's support, measured on demand
    seconds: dict[str, float] = field(default_factory=dict)  # wall seconds per phase and per mechanism

    @property
    def update(self) -> Delta | None:
        """The swarm update of this tick (``None``: none)."""
        return None if self.aggregate is None else self.aggregate.update

    @property
    def decisions(self) -> list[Decision]:
        return [] if self.aggregate is None else self.aggregate.decisions

    @property
    def metrics(self) -> Metrics:
        return {} if self.aggregate is None else self.aggregate.metrics


class Swarm:
    """Agents working over one hive, improving its swarm level together."""

    def __init__(
        self,
        hive: Hive,
        cfg: RunConfig,
        data: dict[str, CLData],
        ledger: Ledger,
        aggregator: Aggregator | None = None,
        method: Method | None = None,
        mechanisms: Sequence[Mechanism] | None = None,
        peers: Peers = ALONE,
    ) -> None:
        self.hive, self.cfg, self.data, self.ledger, self.peers = hive, cfg, data, ledger, peers
        names = cfg.agent_names()
        self.mechanisms = check_mechanisms(build_mechanisms(cfg, names, (*DEFAULT_FACTORIES, health_factory)) if mechanisms is None else mechanisms)
        trackers = [m for m in self.mechanisms if isinstance(m, DirectionTracker)]  # keeps resonance's direction
        self.aggregator = aggregator or build_aggregator(cfg.aggregation, trackers[0].direction if trackers else None)
        self.method = method or build_method(cfg)
        self.schedule = Schedule(cfg.stream) if cfg.stream is not None else None
        self.attribution = SwarmAttribution()
        types = sorted(data)
        self.agents = {n: Agent(n, self.schedule.task_type(1, i) if self.schedule else types[i % len(types)]) for i, n in enumerate(names)}
        new = [n for n in names if n not in hive.agents]
        hive.add_agents(new)
        self.tick_no = 0
        self.accepted = 0
        self.rejected = 0

    # ------------------------------------------------------------------ the tick
    def tick(self) -> TickContext:
        ctx = TickContext(tick=self.tick_no + 1)
        steps: list[tuple[str, Callable[[TickContext], None]]] = [
            ("draw", self._draw), ("solve", self._solve), ("budget", partial(self._run, "budget")),
            ("compose", self._compose), ("apply", self._apply),
            *((phase, partial(self._run, phase)) for phase in ("detect", "migrate", "drain", "decay", "health")),
        ]  # fmt: skip
        for phase, step in steps:
            start = time.perf_counter()
            step(ctx)
            ctx.seconds[phase] = time.perf_counter() - start
        self._record(ctx)
        self.tick_no = ctx.tick
        return ctx

    def settle(self, proposals: Sequence[Proposal]) -> TickContext:
        """The compose and apply phases alone, over proposals made outside a tick (``lorahive serve``).

        The run's aggregator and its compose- and apply-phase mechanisms see the proposals as
        in a tick; no task is drawn, no reputation changes (there are no outcomes), the tick
        number does not advance, and nothing is recorded: the caller records ``ctx``.
        """
        ctx = TickContext(tick=self.tick_no, proposals=list(proposals))
        for phase, step in (("compose", self._compose), ("apply", self._apply)):
            start = time.perf_counter()
            step(ctx)
            ctx.seconds[phase] = time.perf_counter() - start
        return ctx

    def _run(self, phase: str, ctx: TickContext) -> None:
        """Run every enabled mechanism of ``phase``, in registration order; keep what each did."""
        for m in self.mechanisms:
            if m.enabled and phase in m.phases:
                start = time.perf_counter()
                action = m.run(self._view(phase, ctx))
                key = f"{phase}:{m.name}"
                ctx.seconds[key] = ctx.seconds.get(key, 0.0) + time.perf_counter() - start
                if action is not None:
                    ctx.actions.append((m.name, action))

    def _view(self, phase: str, ctx: TickContext) -> TickView:
        core = self.hive.core
        reputations = {n: a.reputation for n, a in self.agents.items()}
        return TickView(
            ctx.tick, phase, ctx.proposals, tuple(ctx.decisions), reputations, core.states, core, dict(ctx.updates),
            support=ctx.support, task_types={n: t.task_type for n, t in ctx.tasks.items()},
            quality={n: o.quality for n, o in ctx.outcomes.items()}, quality_bar=self.cfg.agent.quality_bar,
            activity=lambda levels: self._activity(ctx, levels), seed=self.cfg.seed, shared=ctx.notes, peers=self.peers,
            learn=self._learn,
        )  # fmt: skip

    def _learn(self, examples: Mapping[str, Sequence[tuple[str, str]]], steps: int, levels: Sequence[str]) -> None:
        """``steps`` steps of ``levels`` on ``{agent: [(prompt, answer)]}`` (answers formatted as the fast steps format them); nothing read back."""
        rows = {a: [(p, as_answer(ans)) for p, ans in exs] for a, exs in examples.items() if exs}
        if rows:
            self.hive.learn_async(rows, steps, levels, rows_per_pass=self.cfg.agent.rows_per_pass)

    def _activity(self, ctx: TickContext, levels: Sequence[str]) -> Activity:
        """Pattern activity of ``levels`` on this tick's support examples: one forward pass per tick.

        The first call of a tick measures the levels it asks for; a later call for others
        measures those in one more pass. Each process measures the agents it hosts; the sums
        are added up over the processes.
        """
        have = ctx.activity if ctx.activity is not None else {}
        unseen = [lv for lv in levels if lv not in have]
        slots = written(self.peers, self.hive.core, unseen)
        missing = [lv for lv in unseen if slots[lv]]
        if missing:
            index = dict(zip(self.agents, self.hive.core.agent_index(list(self.agents)), strict=True))
            support = {a: [(p, as_answer(ans)) for p, ans in exs] for a, exs in ctx.support.items() if exs and self.peers.hosts(index[a])}
            totals = add_up(self.peers, self.hive.activity_totals(support, missing, self.cfg.agent.rows_per_pass) if support else None)
            have = {**have, **mean_activity(totals or {})}
        ctx.activity = have
        return {lv: have[lv] for lv in levels if lv in have}

    # ------------------------------------------------------------------ phases
    def task_for(self, agent: Agent, tick: int) -> Task:
        """A fresh task of the agent's type; the draw depends only on (seed, tick, agent)."""
        idx = list(self.agents).index(agent.name)
        seed = random.Random(f"{self.cfg.seed}/{tick}/{idx}").randrange(2**31)
        s = self.cfg.suite
        return sample_task(self.data[agent.task_type], s.support, s.query, seed, self.hive.tokenizer, s.max_prompt_tokens, balanced=s.balanced_support)

    def _draw(self, ctx: TickContext) -> None:
        """Draw every agent's task; ``draw``-phase mechanisms may then edit the support examples."""
        if self.schedule is not None:
            for i, a in enumerate(self.agents.values()):
                a.task_type = self.schedule.task_type(ctx.tick, i)
        ctx.tasks = {n: self.task_for(a, ctx.tick) for n, a in self.agents.items()}
        ctx.support = {n: list(t.support) for n, t in ctx.tasks.items()}
        self._run("draw", ctx)
        for n, t in ctx.tasks.items():
            if ctx.support[n] != list(t.support):
                ctx.tasks[n] = replace(t, support=list(ctx.support[n]))

    def _solve(self, ctx: TickContext) -> None:
        watched = self._watched_levels()
        inputs = max((int(getattr(m, "wants_inputs", 0)) for m in self.mechanisms if m.enabled), default=0)
        if watched or inputs:  # pattern activity (and module inputs) ride on the first learning forward of the tick
            self.hive.watch_activity(watched, inputs)
        self.method.solve(self, ctx)
        if watched or inputs:
            seen = self.hive.watched_activity()
            if watched:
                seen = add_up(self.peers, seen)  # every process measured the agents it hosts
                if seen is not None:
                    ctx.activity = mean_activity(seen)
            ctx.notes["module_inputs"] = self.hive.watched_inputs()
        self._run("solve", ctx)

    def _watched_levels(self) -> list[str]:
        """Levels an enabled mechanism measures pattern activity of (``activity_levels``), non-zero now."""
        levels = sorted({lv for m in self.mechanisms if m.enabled for lv in getattr(m, "activity_levels", ())})
        slots = written(self.peers, self.hive.core, levels)  # over every process: each holds its own agents' slots
        return [lv for lv in levels if slots[lv]]

    def _compose(self, ctx: TickContext) -> None:
        ctx.aggregate = self.aggregator.aggregate(ctx.tick, ctx.proposals)
        self._run("compose", ctx)

    def _apply(self, ctx: TickContext) -> None:
        decisions = {d.agent: d.decision for d in ctx.decisions}  # an agent's last decision counts
        self.accepted += sum(d == "accepted" for d in decisions.values())
        self.rejected += sum(d == "rejected" for d in decisions.values())
        ema = self.cfg.agent.reputation_ema
        for name, out in ctx.outcomes.items():
            cleared = out.quality >= self.cfg.agent.quality_bar
            self.agents[name].observe(cleared and decisions.get(name, "accepted") == "accepted", ema)
        if ctx.update is not None:
            before = self._swarm_weights()
            self.hive.apply_update(self.cfg.swarm_level, ctx.update)
            ctx.updates[self.cfg.swarm_level] = ctx.update
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
        used = {
            i: (p.agent, float(d.weight))
            for i, (p, d) in enumerate(zip(ctx.proposals, ctx.decisions, strict=False))
            if d.accepted and d.weight
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
            if ctx.aggregate is not None:
                self.ledger.record_aggregation(ctx.tick, self.cfg.swarm_level, ctx.aggregate, applied=ctx.update is not None)
            self._run("record", ctx)
            for name, action in ctx.actions:
                self.ledger.record_event(ctx.tick, f"mechanism:{name}", {"action": action.kind, **action.detail})
            self.ledger.record_event(ctx.tick, "tick_seconds", {k: round(v, 6) for k, v in ctx.seconds.items()})

    # ------------------------------------------------------------------ state
    def _mechanism_states(self) -> dict[str, dict[str, Any]]:
        return {"aggregation": dict(self.aggregator.state_dict()), **{m.name: m.state_dict() for m in self.mechanisms}}

    def state(self) -> dict[str, Any]:
        """The swarm's plain-JSON run state; the tensors beside it are :meth:`tensors`."""
        return {
            "tick": self.tick_no,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "agents_state": {n: {"task_type": a.task_type, "reputation": a.reputation, "solved": a.solved} for n, a in self.agents.items()},
            "attribution": self.attribution.state_dict(),
            "method": self.method.state_dict(),
            "mechanisms": split_states(self._mechanism_states())[0],
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        """The mechanisms' tensors (the aggregator's included), keyed ``mechanism/<name>/<key>``."""
        return split_states(self._mechanism_states())[1]

    def load_state(self, state: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Restore :meth:`state` and :meth:`tensors`; each mechanism gets its own state back."""
        self.tick_no = int(state["tick"])
        self.accepted, self.rejected = int(state["accepted"]), int(state["rejected"])
        for n, s in state["agents_state"].items():
            a = self.agents[n]
            a.task_type, a.reputation, a.solved = s["task_type"], float(s["reputation"]), int(s["solved"])
        self.attribution.load_state_dict(state.get("attribution", {}))
        self.method.load_state_dict(state.get("method", {}))
        mech = join_states(state.get("mechanisms", {}), tensors or {})
        self.aggregator.load_state_dict(mech.get("aggregation", {}))
        for m in self.mechanisms:
            m.load_state_dict(mech.get(m.name, {}))
