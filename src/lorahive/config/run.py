"""The run configuration: one swarm run, its sections, and the stream and method it uses.

Every field is documented; a bad value fails at validation with the field's dotted name and
what is allowed (see :mod:`lorahive.config.load` for YAML files and ``key=value`` overrides).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lorahive.config.aggregation import AggregationConfig
from lorahive.config.attack import AttackConfig
from lorahive.config.defaults import DEFAULT_BASE, DEMO_TASK_TYPES
from lorahive.config.errors import clip
from lorahive.config.levels import LevelSpec, StackSpec, as_stack
from lorahive.config.mechanisms import HealthConfig, MechanismsConfig
from lorahive.config.memory import MemorySpec

__all__ = [
    "METHODS",
    "AgentConfig",
    "Method",
    "ObserveConfig",
    "RunConfig",
    "StreamConfig",
    "SuiteConfig",
]

#: How a stream run learns: the full hive, or a baseline over the same engine and data.
Method = Literal["hive", "seq-lora", "replay", "multitask"]
METHODS: tuple[str, ...] = get_args(Method)


class SuiteConfig(BaseModel):
    """Where tasks come from and how big they are."""

    model_config = ConfigDict(extra="forbid", strict=True)

    source: Literal["demo", "cl"] = Field(default="demo", description="demo (shipped slice) | cl (a CL-benchmark folder)")
    root: str | None = Field(default=None, description="cl: folder holding one sub-folder per task type")
    task_types: list[str] | None = Field(default=["agnews", "dbpedia"], min_length=1, description="task types to use; null = all")
    support: int = Field(default=4, ge=1, description="support (learning) examples per task")
    query: int = Field(default=8, ge=1, description="query (scored) examples per task")
    balanced_support: bool = Field(default=True, description="support parts cycle through the label set (tasks with labels)")
    eval_query: int = Field(default=32, ge=1, description="held-out examples per task type for before/after quality")
    eval_all_types: bool = Field(default=False, description="score every agent on every task type (else its own type only)")
    max_prompt_tokens: int = Field(default=96, ge=8, description="prompts are cut to this many tokens")

    @model_validator(mode="after")
    def _root_for_cl(self) -> SuiteConfig:
        if self.source == "cl" and not self.root:
            raise ValueError("suite.root is required when suite.source is 'cl'")
        return self


class AgentConfig(BaseModel):
    """How an agent solves a task (DESIGN.md §2)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    fast_steps: int = Field(default=2, ge=0, description="learning steps on the support part per task")
    fast_levels: list[str] = Field(default=["agent", "context"], description="levels the fast steps train")
    context_level: str | None = Field(default="context", description="task-scoped level reset at each new task")
    quality_bar: float = Field(default=0.25, ge=0.0, le=1.0, description="query quality needed to submit a proposal")
    anchor: float = Field(default=1.0, ge=0.0, description="foundation anchor weight: KL(base ‖ hive) of the next token on the prompts' text, added to the fast steps' and proposals' objective; 0 = off")
    anchor_positions: int = Field(default=16, ge=1, description="prompt positions per example the anchor measures (evenly spaced)")
    rows_per_pass: int | None = Field(default=None, ge=1, description="most support rows one learning forward holds: the agents' rows run in passes of whole agents, gradients added up before each step (the same step, with the activations of one pass at a time); null = every agent in one pass")
    propose_at: Literal["adapted", "start", "shared"] = Field(default="start", description="where an agent's swarm proposal is taken: 'start' = before its fast steps, on the view the tick began with (every agent's gradient is taken, those below the quality bar dropped); 'shared' = before them, on the shared levels alone (the agent's own levels off), so what its own levels already fit still reaches the swarm; 'adapted' = after them, on the view it scored with")
    reputation_ema: float = Field(default=0.7, ge=0.0, lt=1.0, description="reputation ← ema·reputation + (1−ema)·success")


class StreamConfig(BaseModel):
    """A continual-learning stream: task types learned one stage each, in ``order``.

    Every stage runs ``ticks_per_stage`` ticks on its task type; after each stage every
    task type of the order (seen and unseen) is evaluated, filling the accuracy matrix R
    (row 0 = before any learning). ``method`` picks what learns (docs/continual.md):
    ``hive`` the full stack with swarm proposals; ``seq-lora`` one shared LoRA level
    trained on the stages in sequence; ``replay`` seq-lora with past examples mixed into
    each batch; ``multitask`` one level trained on all task types mixed (an upper bound).
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    order: list[str] = Field(min_length=1, description="task types in learning order, e.g. [agnews, amazon, dbpedia, yahoo, yelp]")
    ticks_per_stage: int = Field(default=2, ge=1, description="ticks spent on each task type")
    method: Method = Field(default="hive", description="hive | seq-lora | replay | multitask")
    steps: int | None = Field(default=None, ge=1, description="baselines: learning steps per tick; null = agent.fast_steps + 1, the steps a hive agent's view takes per tick")
    baseline_step: float | None = Field(default=None, gt=0, description="baselines: their one level's step size lr·(1−inertia); null = the step of the stack's per-agent level, the step a hive agent learns its own tasks with")
    replay_fraction: float = Field(default=0.25, ge=0.0, le=1.0, description="replay: fraction of each agent's support examples replaced by past-stage examples")
    replay_buffer: int = Field(default=256, ge=1, description="replay: examples kept from past stages (reservoir sampling)")

    @field_validator("order")
    @classmethod
    def _distinct(cls, order: list[str]) -> list[str]:
        dupes = sorted(t for t, n in Counter(order).items() if n > 1)  # linear: an order may be long
        if dupes:
            raise ValueError(f"task types must be distinct; repeated: {clip(dupes)}")
        return order


class ObserveConfig(BaseModel):
    """What is measured at the end of a run (DESIGN.md §4)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    influence_examples: int = Field(default=4, ge=0, description="held-out examples per task type for level Shapley values; 0 = off")
    retention_tokens: int = Field(default=512, ge=0, description="tokens of held-out text for perplexity before/after; 0 = off")
    retention_text: str | None = Field(default=None, description="held-out text file; null = the WikiText-2 slice shipped in the package")
    retention_window: int = Field(default=128, ge=2, description="perplexity window in tokens")
    health: HealthConfig = Field(default_factory=HealthConfig, description="health metrics per tick (seed 004 § Health Metrics)")


class RunConfig(BaseModel):
    """One swarm run. The defaults are the demo: embedded model, 4 agents, shipped tasks."""

    model_config = ConfigDict(extra="forbid", strict=True)

    base: str = Field(default=DEFAULT_BASE, description="embedded:NAME or a local Hugging Face model directory")
    seed: int = Field(default=0, ge=0, description="seed of adapter init and task sampling")
    levels: list[LevelSpec] | None = Field(default=None, description="the level stack; null = the default five levels")
    agents: int = Field(default=4, ge=1, le=65536, description="number of agents")
    ticks: int = Field(default=3, ge=1, description="ticks to run")
    swarm_level: str = Field(default="swarm", description="the shared level agents improve together")
    suite: SuiteConfig = Field(default_factory=SuiteConfig, description="where tasks come from and how big they are")
    agent: AgentConfig = Field(default_factory=AgentConfig, description="how an agent solves a task")
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig, description="how proposals for the swarm level become one update")
    checkpoint_every: int = Field(default=1, ge=1, description="write a checkpoint every N ticks")
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads; null = torch's default")
    deterministic: bool = Field(default=False, description="torch's deterministic algorithms (and cuBLAS's fixed workspace): the same config and seed give the same numbers on a GPU, run after run, at some cost in speed")
    attack: AttackConfig = Field(default_factory=AttackConfig, description="malicious agents, for testing defences (fraction 0 = none)")
    stream: StreamConfig | None = Field(default=None, description="a continual-learning stream of task types; null = agents keep their own task type")
    observe: ObserveConfig = Field(default_factory=ObserveConfig, description="what is measured at the end of the run")
    mechanisms: MechanismsConfig = Field(default_factory=MechanismsConfig, description="the tick's mechanisms, each switchable (docs/mechanisms.md)")
    memory: MemorySpec = Field(default_factory=MemorySpec, description="where the banks' init snapshots, the optimizer moments and a learn step's gradients live (docs/performance.md, Capacity): all resident, whole-bank gradients, by default")


    def agent_names(self) -> list[str]:
        """The agents a run of this config has: ``agent0 … agentN-1``, zero-padded to one width."""
        return [f"agent{i:0{len(str(self.agents - 1))}d}" for i in range(self.agents)]

    @model_validator(mode="after")
    def _stream_ticks(self) -> RunConfig:
        if self.stream is None:
            return self
        total = len(self.stream.order) * self.stream.ticks_per_stage
        if "ticks" in self.model_fields_set and self.ticks != total:
            raise ValueError(f"ticks: a stream runs len(stream.order) × stream.ticks_per_stage = {total} ticks; drop ticks or set it to {total} (got {self.ticks})")
        self.ticks = total
        if self.suite.source == "demo":
            unknown = [t for t in self.stream.order if t not in DEMO_TASK_TYPES]
            if unknown:
                raise ValueError(f"stream.order: {clip(unknown)} are not task types of the demo slice; allowed: {list(DEMO_TASK_TYPES)}")
        elif self.suite.root and Path(self.suite.root).is_dir():
            have = sorted(p.name for p in Path(self.suite.root).iterdir() if (p / "labels.json").is_file())
            unknown = [t for t in self.stream.order if t not in have]
            if unknown:
                raise ValueError(f"stream.order: {clip(unknown)} are not task types under suite.root {self.suite.root}; allowed: {clip(have)}")
        return self

    def task_types(self) -> list[str] | None:
        """Task types the run loads: the stream's order, else ``suite.task_types``."""
        return list(self.stream.order) if self.stream is not None else self.suite.task_types

    @model_validator(mode="after")
    def _levels_exist(self) -> RunConfig:
        stack = self.stack()
        names = stack.names()
        if self.swarm_level not in names or stack.get(self.swarm_level).scope != "shared":
            raise ValueError(f"swarm_level {self.swarm_level!r} must name a shared level of {names}")
        unknown = [lv for lv in self.agent.fast_levels if lv not in names]
        if unknown:
            raise ValueError(f"agent.fast_levels {unknown} are not levels of {names}")
        if self.agent.context_level is not None and self.agent.context_level not in names:
            raise ValueError(f"agent.context_level {self.agent.context_level!r} is not a level of {names}")
        m = self.mechanisms
        if m.context_modes.enabled and (self.agent.context_level is None or stack.get(self.agent.context_level).scope == "shared"):
            raise ValueError(f"mechanisms.context_modes needs agent.context_level to name a level that is not shared; got {self.agent.context_level!r}")
        for field_name, chosen in (("screening.levels", m.screening.levels), ("inertia.levels", m.inertia.levels), ("vertical_resonance.levels", m.vertical_resonance.levels)):
            unknown = [lv for lv in chosen or [] if lv not in names]
            if unknown:
                raise ValueError(f"mechanisms.{field_name}: {unknown} are not levels of {names}")
        order = {n: i for i, n in enumerate(names)}
        for ch in m.consolidation.channels or []:
            src, _, dst = ch.partition(">")
            if src not in order or dst not in order:
                raise ValueError(f"mechanisms.consolidation.channels: {ch!r} names a level that is not in {names}")
            if order[dst] >= order[src]:
                raise ValueError(f"mechanisms.consolidation.channels: {ch!r} must go to a slower level (earlier in the stack {names})")
        return self

    def stack(self) -> StackSpec:
        return as_stack(self.levels)

    def channels(self) -> list[tuple[str, str]]:
        """Migration channels (source, target): configured, or each level to the next slower trainable one.

        With context modes on, the context level's patterns stay in its modes: no channel leaves it unless configured.
        """
        if self.mechanisms.consolidation.channels is not None:
            return [tuple(ch.split(">", 1)) for ch in self.mechanisms.consolidation.channels]  # type: ignore[misc]
        levels = self.stack().levels
        kept = self.agent.context_level if self.mechanisms.context_modes.enabled else None
        return [(levels[i + 1].name, levels[i].name) for i in range(len(levels) - 1) if levels[i].trainable and levels[i + 1].name != kept]

