"""Validated run configuration (YAML + ``key=value`` overrides) for swarm runs.

Every field is documented; a bad value fails at load with the field's dotted name and what
is allowed, before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorahive.base import DEFAULT_BASE
from lorahive.config import LevelSpec, StackSpec, as_stack
from lorahive.mechanisms.compose import AggregationConfig
from lorahive.runtime.attack import AttackConfig
from lorahive.suites.demo import DEMO_TASK_TYPES

#: How a stream run learns: the full hive, or a baseline over the same engine and data.
Method = Literal["hive", "seq-lora", "replay", "multitask"]
METHODS: tuple[str, ...] = ("hive", "seq-lora", "replay", "multitask")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names each bad field."""


class SuiteConfig(BaseModel):
    """Where tasks come from and how big they are."""

    model_config = ConfigDict(extra="forbid")

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

    model_config = ConfigDict(extra="forbid")

    fast_steps: int = Field(default=3, ge=0, description="learning steps on the support part per task")
    fast_levels: list[str] = Field(default=["agent", "context"], description="levels the fast steps train")
    context_level: str | None = Field(default="context", description="task-scoped level reset at each new task")
    quality_bar: float = Field(default=0.25, ge=0.0, le=1.0, description="query quality needed to submit a proposal")
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

    model_config = ConfigDict(extra="forbid")

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
        dupes = sorted({t for t in order if order.count(t) > 1})
        if dupes:
            raise ValueError(f"task types must be distinct; repeated: {', '.join(dupes)}")
        return order


class ObserveConfig(BaseModel):
    """What is measured at the end of a run (DESIGN.md §4)."""

    model_config = ConfigDict(extra="forbid")

    influence_examples: int = Field(default=4, ge=0, description="held-out examples per task type for level Shapley values; 0 = off")
    retention_tokens: int = Field(default=1024, ge=0, description="tokens of held-out text for perplexity before/after; 0 = off")
    retention_text: str | None = Field(default=None, description="held-out text file; null = the WikiText-2 slice shipped in the package")
    retention_window: int = Field(default=128, ge=2, description="perplexity window in tokens")


class RunConfig(BaseModel):
    """One swarm run. The defaults are the demo: embedded model, 4 agents, shipped tasks."""

    model_config = ConfigDict(extra="forbid")

    base: str = Field(default=DEFAULT_BASE, description="embedded:NAME or a local Hugging Face model directory")
    seed: int = Field(default=0, ge=0, description="seed of adapter init and task sampling")
    levels: list[LevelSpec] | None = Field(default=None, description="the level stack; null = the default five levels")
    agents: int = Field(default=4, ge=1, le=65536, description="number of agents")
    ticks: int = Field(default=4, ge=1, description="ticks to run")
    swarm_level: str = Field(default="swarm", description="the shared level agents improve together")
    suite: SuiteConfig = Field(default_factory=SuiteConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    checkpoint_every: int = Field(default=1, ge=1, description="write a checkpoint every N ticks")
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads; null = torch's default")
    attack: AttackConfig = Field(default_factory=AttackConfig, description="malicious agents, for testing defences (fraction 0 = none)")
    stream: StreamConfig | None = Field(default=None, description="a continual-learning stream of task types; null = agents keep their own task type")
    observe: ObserveConfig = Field(default_factory=ObserveConfig)

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
                raise ValueError(f"stream.order: {unknown} are not task types of the demo slice; allowed: {list(DEMO_TASK_TYPES)}")
        elif self.suite.root and Path(self.suite.root).is_dir():
            have = sorted(p.name for p in Path(self.suite.root).iterdir() if (p / "labels.json").is_file())
            unknown = [t for t in self.stream.order if t not in have]
            if unknown:
                raise ValueError(f"stream.order: {unknown} are not task types under suite.root {self.suite.root}; allowed: {have}")
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
        return self

    def stack(self) -> StackSpec:
        return as_stack(self.levels)


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(x) for x in e["loc"]) or "config"
        got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict | list) else ""
        lines.append(f"{field}: {e['msg'].removeprefix('Value error, ')}{got}")
    return "\n".join(lines)


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_config(data: dict[str, Any] | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Validate a config tree after applying ``key.sub=value`` overrides (values are YAML)."""
    tree = dict(data or {})
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. ticks=5 or agent.fast_steps=3)")
        _set(tree, key.strip(), yaml.safe_load(raw))
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format(e)) from None


#: Largest config file read (a run config is a few hundred bytes).
MAX_CONFIG_BYTES = 1 << 20


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run config; errors name the file and the field."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p}: {p.stat().st_size} bytes is too large for a config file (limit {MAX_CONFIG_BYTES})")
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (yaml.YAMLError, RecursionError) as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of fields, got {type(data).__name__}")
    suite = (data or {}).get("suite")
    if isinstance(suite, dict) and isinstance(suite.get("root"), str) and not Path(suite["root"]).is_absolute():
        suite["root"] = str((p.parent / suite["root"]).resolve())  # relative to the config file
    try:
        return parse_config(data, overrides)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
