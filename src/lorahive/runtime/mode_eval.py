"""Held-out evaluation with context modes at inference (seed 004 §5: the input collapses the context level).

Without modes the context level is left out of evaluation: it holds whatever the agent's last
task taught it. With :class:`~lorahive.mechanisms.context_modes.ContextModes` on and
``at_inference``, each task type's prompts pick a mode as the router picks one for a task in
a tick (their mean pooled base-model state, the nearest opened key by the router's measure;
nothing is opened or moved), the agents' context slots are loaded with it, and the type is scored with
the context level on. The slots get their weights back afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from lorahive.mechanisms.base import Mechanism
from lorahive.mechanisms.context_modes import ContextModes
from lorahive.runtime.agent import evaluate
from lorahive.runtime.hive import Hive
from lorahive.suites.task import Task

__all__ = ["evaluate_with_modes", "inference_modes"]


def inference_modes(mechanisms: Sequence[Mechanism]) -> ContextModes | None:
    """The run's context modes when they route at inference (enabled, ``at_inference``), else ``None``."""
    for m in mechanisms:
        if isinstance(m, ContextModes) and m.enabled and m.cfg.at_inference:
            return m
    return None


def evaluate_with_modes(
    hive: Hive, modes: ContextModes | None, agents: Sequence[str], tasks: Mapping[str, Task], levels: Sequence[str]
) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """:func:`evaluate` over ``levels``, each task type with its mode in the context level; and the mode each type took.

    A type for which no mode is open (``modes`` is ``None``, or nothing opened yet) is scored
    on ``levels`` alone.
    """
    picks = {t: m for t, task in tasks.items() if modes is not None and (m := modes.pick(hive.core, task.query_prompts)) is not None}
    if not picks or modes is None:
        return evaluate(hive, agents, tasks, levels), {}
    core, level = hive.core, modes.level
    slots = [core.slot_of(level, a) for a in agents]
    idx = core.index(slots)
    saved = {p: (bank.A.detach().index_select(0, idx).clone(), bank.B.detach().index_select(0, idx).clone()) for p, bank in core.named_banks(level)}
    out: dict[str, dict[str, float]] = {a: {} for a in agents}
    try:
        for task_type, task in tasks.items():
            if task_type in picks:
                modes.load_mode(core, agents, picks[task_type])
                scored = evaluate(hive, agents, {task_type: task}, [*levels, level])
            else:
                scored = evaluate(hive, agents, {task_type: task}, levels)
            for a in agents:
                out[a][task_type] = scored[a][task_type]
    finally:
        with torch.no_grad():
            core.load_slots(level, slots, saved)
    return out, picks
