"""Continual-learning streams: which task type each agent works on at each tick.

A stream (``RunConfig.stream``) learns the task types of ``order`` one *stage* each, for
``ticks_per_stage`` ticks; stage *s* (1-based) covers ticks ``(s−1)·k + 1 … s·k``. After
each stage the run evaluates every task type of the order, filling row *s* of the accuracy
matrix R (:mod:`lorahive.observe.metrics`). ``multitask`` keeps the stages as evaluation
points but mixes all task types: agent *i* at tick *t* works on ``order[(i + t) mod T]``,
so over any *T* consecutive ticks every agent sees every type once.

Also here: the level stack and the method each stream method learns with.
"""

from __future__ import annotations

from lorahive.config import RunConfig, StackSpec, StreamConfig
from lorahive.runtime.methods import HiveMethod, Method, Replay, SeqLoRA

__all__ = ["Schedule", "build_method", "method_stack"]


class Schedule:
    """Stage and task-type assignment of a stream, as pure functions of the tick."""

    def __init__(self, cfg: StreamConfig) -> None:
        self.order = list(cfg.order)
        self.ticks_per_stage = cfg.ticks_per_stage
        self.mixed = cfg.method == "multitask"

    @property
    def stages(self) -> int:
        return len(self.order)

    def stage_of(self, tick: int) -> int:
        """The 1-based stage a tick (1-based) belongs to."""
        if tick < 1:
            raise ValueError(f"ticks are counted from 1, got {tick}")
        return (tick - 1) // self.ticks_per_stage + 1

    def ends_stage(self, tick: int) -> bool:
        return tick % self.ticks_per_stage == 0

    def task_type(self, tick: int, agent_index: int) -> str:
        if self.mixed:
            return self.order[(agent_index + tick) % len(self.order)]
        return self.order[self.stage_of(tick) - 1]


def method_stack(cfg: RunConfig) -> StackSpec:
    """The level stack a run's method learns with: the full stack for the hive, else one level.

    The baselines' one level is the configured swarm level (its name, rank and alpha): the
    shared level the hive's agents improve together, trained directly instead. Its step size
    is ``stream.baseline_step``, by default that of the stack's per-agent level: the swarm
    level's own small step is meant for an aggregate of many agents, and a baseline trained
    with it would barely move, which would flatter the hive.
    """
    stack = cfg.stack()
    if cfg.stream is None or cfg.stream.method == "hive":
        return stack
    level = stack.get(cfg.swarm_level)
    step = cfg.stream.baseline_step
    if step is None:
        step = next((lv.step_size for lv in stack.levels if lv.scope == "agent"), level.step_size)
    return StackSpec(levels=(level.model_copy(update={"lr": step, "inertia": 0.0}),))


def build_method(cfg: RunConfig) -> Method:
    """The solve-phase method of ``cfg`` (the hive unless a stream names a baseline)."""
    s = cfg.stream
    if s is None or s.method == "hive":
        return HiveMethod()
    steps = s.steps if s.steps is not None else cfg.agent.fast_steps + 1
    if s.method == "replay":
        return Replay(SeqLoRA(cfg.swarm_level, steps), s.replay_fraction, s.replay_buffer, cfg.seed)
    return SeqLoRA(cfg.swarm_level, steps, name=s.method)
