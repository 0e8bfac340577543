"""Feedback into swarm proposals: a *serve tick* every N taught examples, in small steps.

Every example a feedback event teaches (:mod:`lorahive.serve.feedback`) is learned at once on
the agent's own levels and then waits for the next serve tick. Once ``tick_every`` examples
wait, a serve tick starts with all of them and runs on the decode worker as a series of
small units, one unit per gap between two decode steps, so decoding is never held up by more
than one unit:

    propose   one unit per agent: that agent's examples become its proposal for the swarm
              level — its exact gradient there (``Hive.propose``), as in a tick's solve
              phase — with quality 1 (a correction, or an answer rewarded above the bar, is
              taken as right) and the agent's reputation
    settle    one unit: the run's aggregator and its compose- and apply-phase mechanisms
              (``Swarm.settle``) turn the proposals into the swarm level's update

A ``serve_tick`` ledger event records what it did, in one transaction with its ``proposals``,
``updates`` and ``mechanism:*`` rows (their id ranges are in its ``rows``); its ``through`` is
the last feedback row it consumed, so a restarted server knows which examples still wait.
The run's tick number does not advance (rows carry the run's tick); serve ticks are counted
in ``serve_tick``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lorahive.mechanisms.base import Proposal
from lorahive.observe.ledger import Ledger
from lorahive.runtime.swarm import Swarm
from lorahive.serve.durable import Queued


@dataclass
class _Tick:
    """A serve tick under way: the examples it took, the agents still to propose, the proposals so far."""

    number: int
    taken: list[Queued]
    todo: list[str]
    proposals: list[Proposal] = field(default_factory=list)
    units: list[float] = field(default_factory=list)  # seconds of each unit (each one gap between decode steps)


class SwarmFeed:
    """Waiting examples of every agent, and the serve tick that turns them into a swarm update."""

    def __init__(self, swarm: Swarm, every: int, ticks_done: int = 0, waiting: list[Queued] | None = None) -> None:
        if every < 1:
            raise ValueError(f"tick_every must be ≥ 1, got {every}")
        self.swarm, self.every, self.done = swarm, every, ticks_done
        self.waiting: list[Queued] = list(waiting or [])
        self.tick: _Tick | None = None
        self.max_unit = 0.0  # the longest unit so far: the largest decode stall a serve tick caused
        self.seconds = 0.0

    @property
    def busy(self) -> bool:
        """A unit of work is ready (a serve tick is under way, or one is due)."""
        return self.tick is not None or len(self.waiting) >= self.every

    def add(self, q: Queued) -> None:
        self.waiting.append(q)

    def step(self, ledger: Ledger | None) -> dict[str, object] | None:
        """Run one unit if one is ready; returns the ``serve_tick`` record when a serve tick ends."""
        if self.tick is None:
            if len(self.waiting) < self.every:
                return None
            taken, self.waiting = self.waiting, []
            self.tick = _Tick(self.done + 1, taken, sorted({q.agent for q in taken}, key=[q.agent for q in taken].index))
        t = time.perf_counter()
        tick, record = self.tick, None
        if tick.todo:
            self._propose(tick, tick.todo.pop(0))
        else:
            record = self._settle(tick, ledger, t)
        spent = time.perf_counter() - t
        self.max_unit = max(self.max_unit, spent)
        self.seconds += spent
        if record is None:
            tick.units.append(spent)
        return record

    def _propose(self, tick: _Tick, agent: str) -> None:
        swarm, cfg = self.swarm, self.swarm.cfg
        examples = {agent: [(q.prompt, q.answer) for q in tick.taken if q.agent == agent]}
        grads, _ = swarm.hive.propose(examples, cfg.swarm_level, anchor=cfg.agent.anchor, anchor_positions=cfg.agent.anchor_positions)
        delta = {k: v.detach() for k, v in grads[agent].items()}
        reputation = swarm.agents[agent].reputation if agent in swarm.agents else 1.0
        tick.proposals.append(Proposal(agent, cfg.swarm_level, swarm.tick_no, delta, 1.0, reputation))

    def _settle(self, tick: _Tick, ledger: Ledger | None, started: float) -> dict[str, object]:
        swarm = self.swarm
        ctx = swarm.settle(tick.proposals)
        agg = ctx.aggregate
        units = [*tick.units, time.perf_counter() - started]  # the last one without its ledger write
        record: dict[str, object] = {
            "serve_tick": tick.number, "through": max(q.row for q in tick.taken), "feedback": [q.feedback_id for q in tick.taken],
            "agents": {a: sum(q.agent == a for q in tick.taken) for a in {q.agent for q in tick.taken}},
            "accepted": sum(d.accepted for d in ctx.decisions), "rejected": sum(not d.accepted for d in ctx.decisions),
            "applied": ctx.update is not None, "norm": None if agg is None else agg.metrics.get("norm"), "level": swarm.cfg.swarm_level,
            "units": [round(u, 5) for u in units], "max_stall_s": round(max(units), 5),
        }  # fmt: skip
        if ledger is not None:
            before = ledger.max_ids()
            with ledger.transaction():
                if agg is not None:
                    ledger.record_aggregation(swarm.tick_no, swarm.cfg.swarm_level, agg, applied=ctx.update is not None)
                for name, action in ctx.actions:
                    ledger.record_event(swarm.tick_no, f"mechanism:{name}", {"action": action.kind, **action.detail})
                after = ledger.max_ids()
                record["rows"] = {t: [before[t] + 1, after[t]] for t in after if after[t] > before[t]}
                ledger.record_event(swarm.tick_no, "serve_tick", record)
        self.tick = None
        self.done += 1
        return record
