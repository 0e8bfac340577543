"""Agents: solve a task on their fast levels, score it, propose for the swarm level.

``solve_all`` runs many agents' tasks through one batched pass per step (DESIGN.md §2):
reset each agent's context slot, take k fast steps on the support parts, score the query
parts, and collect the exact swarm-level gradient of every agent that cleared the bar.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import torch

from lorahive.config import AgentConfig
from lorahive.learning import as_answer
from lorahive.mechanisms.aggregation import Delta
from lorahive.runtime.hive import Hive, read_losses
from lorahive.suites.task import Task


@dataclass
class Agent:
    """An agent's standing: its specialty and its reputation (running success rate)."""

    name: str
    task_type: str
    reputation: float = 0.5
    solved: int = 0

    def observe(self, success: bool, ema: float) -> None:
        self.reputation = ema * self.reputation + (1.0 - ema) * float(success)
        self.solved += 1


@dataclass(frozen=True)
class Outcome:
    """What solving one task produced."""

    quality: float
    loss: float
    proposal: Delta | None


def predict(hive: Hive, rows: Sequence[tuple[str, str]], labels: Sequence[str] | None, levels: Sequence[str] | None = None) -> list[str]:
    """Each ``(agent, prompt)`` row's answer: the most likely label, or greedy text when no labels."""
    if not labels:
        agents, prompts = [a for a, _ in rows], [p for _, p in rows]
        return [s.strip() for s in hive.generate(prompts, agents, max_new_tokens=16, levels=levels)]
    nll = hive.option_nll(list(rows), [as_answer(lab) for lab in labels], levels=levels)  # (rows, labels)
    return [labels[int(i)] for i in nll.argmin(dim=1)]


def score(hive: Hive, tasks: Mapping[str, Task], levels: Sequence[str] | None = None) -> dict[str, float]:
    """Query quality of each agent on its task, all agents in shared batches per label set."""
    quality: dict[str, float] = {}
    by_labels: dict[tuple[str, ...] | None, list[str]] = {}
    for agent, task in tasks.items():
        by_labels.setdefault(task.labels, []).append(agent)
    for labels, agents in by_labels.items():
        rows = [(a, p) for a in agents for p in tasks[a].query_prompts]
        preds = predict(hive, rows, labels, levels)
        start = 0
        for a in agents:
            n = len(tasks[a].query)
            quality[a] = tasks[a].score(preds[start : start + n])
            start += n
    return quality


def solve_all(hive: Hive, tasks: Mapping[str, Task], cfg: AgentConfig, swarm_level: str, keep_context: Collection[str] = ()) -> dict[str, Outcome]:
    """Every agent solves its task; agents at or above ``cfg.quality_bar`` propose.

    Each agent's context slot starts from its init snapshot, but for the agents in
    ``keep_context``, whose slot was prepared for this task (context modes).
    """
    if cfg.context_level is not None:
        hive.reset_slots(cfg.context_level, [a for a in tasks if a not in keep_context])
    support = {a: [(p, as_answer(ans)) for p, ans in t.support] for a, t in tasks.items()}
    fast = hive.core.with_grown(cfg.fast_levels)
    # at the start, the proposal is the first fast step's own gradient on the swarm level (same rows, objective, weights)
    fold = cfg.propose_at == "start" and bool(support) and cfg.fast_steps > 0 and swarm_level not in fast
    early = _propose(hive, support, cfg, swarm_level) if cfg.propose_at == "start" and support and not fold else None
    if cfg.propose_at == "shared" and support:  # on the shared levels alone, before the fast steps
        early = _propose(hive, support, cfg, swarm_level, shared_view(hive))
    first: dict[str, torch.Tensor] | None = None
    for step in range(cfg.fast_steps):  # the first step's loss is measured before any update
        if fold and step == 0:
            step_losses, grads = hive.learn_and_propose(support, swarm_level, levels=fast, anchor=cfg.anchor, anchor_positions=cfg.anchor_positions, rows_per_pass=cfg.rows_per_pass)
            early = _detached(grads)
        else:
            step_losses = hive.learn_async(support, steps=1, levels=fast, anchor=cfg.anchor, anchor_positions=cfg.anchor_positions, rows_per_pass=cfg.rows_per_pass)
        first = first or step_losses
    losses = hive.loss(support, rows_per_pass=cfg.rows_per_pass) if first is None else read_losses(first)
    quality = score(hive, tasks)
    good = {a: ex for a, ex in support.items() if quality[a] >= cfg.quality_bar}
    proposals: dict[str, Delta] = {}
    if early is not None:
        proposals = {a: g for a, g in early.items() if a in good}
    elif good:
        proposals = _propose(hive, good, cfg, swarm_level)
    return {a: Outcome(quality[a], losses[a], proposals.get(a)) for a in tasks}


def _propose(hive: Hive, examples: Mapping[str, list[tuple[str, str]]], cfg: AgentConfig, swarm_level: str, view: Sequence[str] | None = None) -> dict[str, Delta]:
    grads, _ = hive.propose(dict(examples), swarm_level, anchor=cfg.anchor, anchor_positions=cfg.anchor_positions, rows_per_pass=cfg.rows_per_pass, levels=view)
    return _detached(grads)


def shared_view(hive: Hive) -> list[str]:
    """The levels every agent shares (grown ones included): what an agent with no levels of its own runs."""
    return [lv.name for lv in hive.stack.levels if lv.scope == "shared"]


def _detached(grads: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, Delta]:
    return {a: {k: v.detach() for k, v in g.items()} for a, g in grads.items()}  # stay on the device


def solve(hive: Hive, agent: str, task: Task, cfg: AgentConfig, swarm_level: str = "swarm") -> Outcome:
    """One agent solves one task (the batched path with a batch of one)."""
    return solve_all(hive, {agent: task}, cfg, swarm_level)[agent]



def evaluate(hive: Hive, agents: Sequence[str], tasks: Mapping[str, Task], levels: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Quality of every agent on every task type's held-out task: ``{agent: {task_type: q}}``."""
    out: dict[str, dict[str, float]] = {a: {} for a in agents}
    for task_type, task in tasks.items():
        for agent, q in score(hive, {a: task for a in agents}, levels).items():
            out[agent][task_type] = q
    return out
