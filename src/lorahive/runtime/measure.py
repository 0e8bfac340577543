"""What a run measures beside task quality: retention perplexity and level influence.

DESIGN.md §4. *Retention*: perplexity of held-out text (the WikiText-2 slice shipped in the
package, or ``observe.retention_text``) under the agents' persistent views, at the start
and at the end of a run — general language ability kept or lost. *Influence*: per task
type, the exact Shapley share of every level on the answer log-probability of a few
held-out examples (:func:`~lorahive.observe.influence.level_influence`).

Agents whose views are identical (a stack with only shared persistent levels, as the
baselines have, or any stack before learning) are measured once: their numbers are the
same function of the same weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lorahive.config import ObserveConfig
from lorahive.core import persistent_levels
from lorahive.observe.influence import SwarmAttribution, level_influence
from lorahive.observe.metrics import heldout_text, perplexity
from lorahive.runtime.agent import Agent, as_answer
from lorahive.runtime.hive import Hive
from lorahive.suites.task import Task

__all__ = ["distinct_views", "influence_record", "influence_views", "level_shares", "retention_ppl", "retention_record", "retention_text", "view_groups"]


def view_groups(hive: Hive, agents: Sequence[str]) -> dict[str, str]:
    """Each agent -> the first agent whose persistent view equals its own (bitwise).

    Views differ only through agent-scoped levels; agents whose slots there hold the same
    weights, or whose B is zero in both (a fresh slot adds exactly nothing), compute the
    same function, so each group is measured once.
    """
    per_agent = [lv.name for lv in hive.levels if lv.scope == "agent"]
    reps: list[str] = []
    out: dict[str, str] = {}
    for a in agents:
        out[a] = next((r for r in reps if _same_view(hive, per_agent, a, r)), a)
        if out[a] == a:
            reps.append(a)
    return out


def _same_view(hive: Hive, levels: Sequence[str], a: str, b: str) -> bool:
    for lv in levels:
        sa, sb = hive.core.slot_of(lv, a), hive.core.slot_of(lv, b)
        if sa == sb or hive.core.is_zero(lv, [sa, sb]):  # B·A = 0 whatever A is
            continue
        for bank in hive.core.banks(lv):
            if not (torch.equal(bank.A[sa], bank.A[sb]) and torch.equal(bank.B[sa], bank.B[sb])):
                return False
    return True


def distinct_views(hive: Hive, agents: Sequence[str]) -> list[str]:
    """One agent per group of identical views (:func:`view_groups`), in order."""
    return sorted(set(view_groups(hive, agents).values()), key=list(agents).index)


def retention_text(cfg: ObserveConfig) -> str:
    return heldout_text() if cfg.retention_text is None else Path(cfg.retention_text).read_text(encoding="utf-8")


def retention_ppl(hive: Hive, agents: Sequence[str], cfg: ObserveConfig, text: str) -> dict[str, float]:
    """Perplexity of the held-out text under each agent's view (persistent levels)."""
    levels = persistent_levels(hive.stack)
    groups = view_groups(hive, agents)
    ppl = {a: perplexity(hive.core, text, a, levels, window=cfg.retention_window, max_tokens=cfg.retention_tokens) for a in set(groups.values())}
    return {a: ppl[groups[a]] for a in agents}


def _examples(task: Task, n: int) -> list[tuple[str, str]]:
    return [(p, as_answer(a)) for p, a in task.query[:n]]


def level_shares(hive: Hive, tasks: Mapping[str, Task], agents: Mapping[str, Sequence[str]], n: int) -> dict[str, dict[str, Any]]:
    """Per task type: each level's Shapley share, value (nats) and drop-one KL.

    Example i of a task type is routed to ``agents[type][i mod len]``. Levels that are
    exactly zero for every example's agent add nothing (a dummy player's Shapley value is
    exactly 0), so they are left out of the game and reported as 0; this halves the cost
    per such level.
    """
    out: dict[str, dict[str, Any]] = {}
    for task_type, task in tasks.items():
        examples = _examples(task, n)
        who = agents[task_type]
        rows = [who[i % len(who)] for i in range(len(examples))]
        zero = hive.core.zero_levels() | _zero_agent_levels(hive, rows)
        game = [lv.name for lv in hive.levels if lv.name not in zero]
        shares = dict.fromkeys(hive.stack.names(), 0.0)
        shapley = dict.fromkeys(hive.stack.names(), 0.0)
        kl = dict.fromkeys(hive.stack.names(), 0.0)
        if game:
            inf = level_influence(hive.core, examples, rows, game)
            shares.update(inf.shares())
            shapley.update(inf.shapley)
            kl.update({k: v for k, v in inf.kl.items() if math.isfinite(v)})
        out[task_type] = {"shares": shares, "shapley": shapley, "kl": kl}
    return out


def _zero_agent_levels(hive: Hive, agents: Sequence[str]) -> set[str]:
    """Per-agent/per-task levels whose B is exactly zero in the slots of every one of ``agents``."""
    zero = set()
    for lv in hive.levels:
        if lv.scope == "shared":
            continue
        if hive.core.is_zero(lv.name, hive.core.slots_of(lv.name, agents)):
            zero.add(lv.name)
    return zero


def _mean(values: Any) -> float | None:
    vals = list(values)
    return sum(vals) / len(vals) if vals else None


def retention_record(before: Mapping[str, float] | None, after: Mapping[str, float], tokens: int) -> dict[str, Any]:
    """``metrics.json``'s ``retention``: held-out perplexity per agent before and after learning, and the means."""
    before = before or {}
    return {
        "ppl_before": _mean(before.values()),
        "ppl_after": _mean(after.values()),
        "per_agent": {a: {"before": before.get(a), "after": v} for a, v in after.items()},
        "tokens": tokens,
    }


def influence_views(hive: Hive, agents: Mapping[str, Agent], task_types: Iterable[str], stream: bool) -> dict[str, list[str]]:
    """Per evaluated task type, the agents whose views its level Shapley values are measured on.

    In a stream every agent works on every type, so each distinct view counts; otherwise the
    agents of that type (all agents when none has it).
    """
    names = list(agents)
    if stream:
        return {t: distinct_views(hive, names) for t in task_types}
    return {t: [n for n, a in agents.items() if a.task_type == t] or names for t in task_types}


def influence_record(shares: Mapping[str, Mapping[str, Any]] | None, attribution: SwarmAttribution, examples: int) -> dict[str, Any]:
    """``metrics.json``'s ``influence``: level Shapley shares, values and drop-one KL (when measured), and the agents'."""
    influence: dict[str, Any] = {}
    if shares is not None:
        influence["levels"] = {t: v["shares"] for t, v in shares.items()}
        influence["shapley_nats"] = {t: v["shapley"] for t, v in shares.items()}
        influence["drop_one_kl"] = {t: v["kl"] for t, v in shares.items()}
        influence["examples_per_type"] = examples
    influence["agents"] = attribution.shares()
    influence["agent_mass"] = attribution.mass
    return influence
