"""A stages run: ordered training stages over one frozen LM, each with its objective, data, scope and budget.

Seed 000 asks who decides how much each training tool shapes a model, whether their order
matters, and whether one can tell afterwards which tool carries which behaviour. A stages run
makes that explicit (docs/stages.md): every stage names its objective (``sft``: next-token
cross-entropy on the chosen answers; ``dpo``: direct preference optimisation on the pairs),
its data set, the levels of the stack it may write, a layer scope (projections and blocks)
and an influence budget (a cap on the Frobenius norm of the ΔW it adds, absolute or as a
share of ``total_norm``). Each stage writes only its own stage-tagged copies of its levels
(``<level>_<stage>``), so its ΔW is known exactly and its Shapley value can be measured.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorahive.config.defaults import DEFAULT_BASE
from lorahive.config.errors import ConfigError, format_config_error
from lorahive.config.levels import DEFAULT_TARGETS, LevelSpec, StackSpec
from lorahive.config.load import apply_overrides, read_tree

__all__ = [
    "BudgetSpec",
    "PairsSpec",
    "ScopeSpec",
    "StageSpec",
    "StagesConfig",
    "default_stage_levels",
    "is_stages_tree",
    "load_stages_config",
    "parse_stages_config",
]

Objective = Literal["sft", "dpo"]


class PairsSpec(BaseModel):
    """A data set of preference pairs (prompt, chosen, rejected); SFT learns the chosen answers.

    ``cl``: a CL-benchmark task type (the shipped demo slice when ``root`` is null); chosen is
    the correct label, rejected a wrong label drawn with the run's seed. ``knowledge``: a
    knowledge-edit file of ``../shared/data/knowledge/`` — CounterFact (chosen ``target_new``
    over the old ``ground_truth``) or zsRE (chosen ``alt`` over the old answer); held-out
    pairs ask the paraphrased prompts of the same edits.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    source: Literal["cl", "knowledge"] = Field(description="cl (label tasks) | knowledge (CounterFact or zsRE edits)")
    task_type: str | None = Field(default=None, description="cl: the task type, e.g. agnews")
    root: str | None = Field(default=None, description="cl: folder holding one sub-folder per task type; null = the shipped demo slice")
    path: str | None = Field(default=None, description="knowledge: a CounterFact or zsRE JSON file (the format is read from its records)")
    train: int = Field(default=16, ge=1, description="pairs stages learn from")
    eval: int = Field(default=8, ge=1, description="held-out pairs behaviour and attribution are measured on")
    max_prompt_tokens: int = Field(default=96, ge=8, description="cl: prompts are cut to this many tokens")

    @model_validator(mode="after")
    def _source_fields(self) -> PairsSpec:
        if self.source == "cl":
            if not self.task_type:
                raise ValueError("task_type is required when source is 'cl'")
            if self.path is not None:
                raise ValueError("path is for source 'knowledge'; a 'cl' data set names task_type (and root)")
        if self.source == "knowledge":
            if not self.path:
                raise ValueError("path is required when source is 'knowledge'")
            if self.task_type is not None or self.root is not None:
                raise ValueError("task_type and root are for source 'cl'; a 'knowledge' data set names path")
            if self.eval > self.train:
                raise ValueError(f"eval: {self.eval} > train {self.train}; knowledge held-out pairs are the paraphrases of trained edits, so eval ≤ train")
        return self


class ScopeSpec(BaseModel):
    """Where in the model a stage may write: which projections, in which decoder blocks."""

    model_config = ConfigDict(extra="forbid", strict=True)

    targets: list[str] = Field(default=list(DEFAULT_TARGETS), min_length=1, description="projection names, e.g. [q_proj, v_proj]; each must name Linear modules of the model")
    blocks: list[int] | None = Field(default=None, description="decoder block indices (distinct, ≥ 0, within the model); null = every block")

    @field_validator("targets")
    @classmethod
    def _distinct_targets(cls, targets: list[str]) -> list[str]:
        if any(not t for t in targets) or len(set(targets)) != len(targets):
            raise ValueError(f"targets must be distinct, non-empty projection names, got {targets}")
        return targets

    @field_validator("blocks")
    @classmethod
    def _distinct_blocks(cls, blocks: list[int] | None) -> list[int] | None:
        if blocks is not None and (not blocks or any(b < 0 for b in blocks) or len(set(blocks)) != len(blocks)):
            raise ValueError(f"blocks must be distinct block indices ≥ 0 (or null for every block), got {blocks}")
        return blocks


class BudgetSpec(BaseModel):
    """A stage's influence budget: the Frobenius norm of the ΔW it adds (summed over its levels, all modules).

    After every step the stage's ΔW is scaled back onto the ball of radius ``max_norm`` (or
    ``share × total_norm``) when it left it — an exact projection, since ΔW = s·B·A scales
    with B. Both null: no budget.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    max_norm: float | None = Field(default=None, gt=0, description="cap on ‖ΔW‖_F of the stage")
    share: float | None = Field(default=None, gt=0, le=1, description="cap as a share of the run's total_norm")

    @model_validator(mode="after")
    def _one(self) -> BudgetSpec:
        if self.max_norm is not None and self.share is not None:
            raise ValueError("give max_norm or share, not both")
        return self


class StageSpec(BaseModel):
    """One training stage."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9]*$", description="stage tag; null = objective + occurrence (sft1, dpo1, sft2)")
    objective: Objective = Field(description="sft (answer NLL on the chosen answers) | dpo (preference pairs)")
    data: list[str] = Field(min_length=1, description="names of data sets of this config's data section; their training pairs are pooled")
    levels: list[str] = Field(min_length=1, description="levels of the stack the stage writes (through its own tagged copies)")
    scope: ScopeSpec = Field(default_factory=ScopeSpec, description="projections and blocks the stage may write")
    budget: BudgetSpec = Field(default_factory=BudgetSpec, description="cap on the norm of the ΔW the stage adds")
    steps: int = Field(default=8, ge=1, description="optimizer steps")
    batch: int = Field(default=8, ge=1, description="pairs per step")
    beta: float = Field(default=0.1, gt=0, description="dpo: the inverse temperature β of the implicit reward")
    lr: float | None = Field(default=None, gt=0, description="learning rate of the stage's levels; null = each level's own")

    @model_validator(mode="after")
    def _dpo_only(self) -> StageSpec:
        default = type(self).model_fields["beta"].default
        if self.objective == "sft" and self.beta != default:  # the default is written back by dump_config; any other value is a mistake
            raise ValueError(f"beta: {self.beta:g} is the DPO inverse temperature; an sft stage takes none (drop beta or use objective: dpo)")
        return self


def default_stage_levels() -> list[LevelSpec]:
    """The levels a stages run offers when none are given: a slow shared level and a fast one."""
    return [
        LevelSpec(name="domain", rank=8, alpha=16, scope="shared", inertia=0.0, lr=5e-4),
        LevelSpec(name="swarm", rank=8, alpha=16, scope="shared", inertia=0.0, lr=1e-3),
    ]


class StagesConfig(BaseModel):
    """A stages run: one learner over one frozen LM, trained by ``stages`` in order."""

    model_config = ConfigDict(extra="forbid", strict=True)

    base: str = Field(default=DEFAULT_BASE, description="embedded:NAME or a local Hugging Face model directory")
    seed: int = Field(default=0, ge=0, description="seed of adapter init, pair sampling and batch order")
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads; null = torch's default")
    levels: list[LevelSpec] | None = Field(default=None, description="levels stages may write; null = domain and swarm (default_stage_levels)")
    data: dict[str, PairsSpec] = Field(min_length=1, description="named data sets of preference pairs")
    stages: list[StageSpec] = Field(min_length=1, description="the stages, in the order they run")
    total_norm: float | None = Field(default=None, gt=0, description="the norm budget that stage budgets' shares divide")
    max_rows: int = Field(default=64, ge=1, description="rows per forward when measuring Shapley values")
    eval_batch: int = Field(default=32, ge=1, description="rows per forward when measuring behaviour")
    checkpoint_every: int = Field(default=25, ge=1, description="write a checkpoint every N optimizer steps (and at every stage's end), so `lorahive resume` continues a killed run exactly")

    @field_validator("stages", mode="before")
    @classmethod
    def _data_lists(cls, stages: Any) -> Any:
        """``data: name`` is short for ``data: [name]``."""
        if isinstance(stages, list):
            return [{**st, "data": [st["data"]]} if isinstance(st, dict) and isinstance(st.get("data"), str) else st for st in stages]
        return stages

    @model_validator(mode="after")
    def _references(self) -> StagesConfig:
        names = [lv.name for lv in self.stack_levels()]
        for i, st in enumerate(self.stages):
            unknown = [lv for lv in st.levels if lv not in names]
            if unknown:
                raise ValueError(f"stages.{i}.levels: {unknown} are not levels of {names}")
            if len(set(st.levels)) != len(st.levels):
                raise ValueError(f"stages.{i}.levels: {st.levels} names a level twice")
            missing = [d for d in st.data if d not in self.data]
            if missing:
                raise ValueError(f"stages.{i}.data: {missing} are not data sets of {sorted(self.data)}")
            if st.budget.share is not None and self.total_norm is None:
                raise ValueError(f"stages.{i}.budget.share needs total_norm")
        tags = self.stage_names()
        dupes = sorted(t for t, n in Counter(tags).items() if n > 1)
        if dupes:
            raise ValueError(f"stages: names {dupes} are used twice; give each stage its own name")
        shares = sum(st.budget.share or 0.0 for st in self.stages)
        if shares > 1.0 + 1e-9:
            raise ValueError(f"stages: budget shares add up to {shares:g} > 1")
        taken = set(names)
        clash = sorted(lv.name for lv in self.tagged_levels() if lv.name in taken)
        if clash:
            raise ValueError(f"stages: tagged levels {clash} collide with levels of the stack")
        return self

    def stack_levels(self) -> list[LevelSpec]:
        return list(self.levels) if self.levels is not None else default_stage_levels()

    def stage_names(self) -> list[str]:
        """Each stage's tag: its name, or objective + occurrence (``sft1``, ``dpo1``, ``sft2``)."""
        seen: Counter[str] = Counter()
        out = []
        for st in self.stages:
            seen[st.objective] += 1
            out.append(st.name or f"{st.objective}{seen[st.objective]}")
        return out

    def levels_of(self, index: int) -> list[LevelSpec]:
        """Stage ``index``'s tagged copies of its levels: rank, scope and speed of the level, targets and blocks of its scope."""
        st, tag = self.stages[index], self.stage_names()[index]
        specs = {lv.name: lv for lv in self.stack_levels()}
        out = []
        for name in st.levels:
            lv = specs[name]
            blocks = None if st.scope.blocks is None else tuple(st.scope.blocks)
            out.append(lv.model_copy(update={"name": f"{name}_{tag}", "targets": tuple(st.scope.targets), "blocks": blocks, "trainable": True, "lr": st.lr or lv.lr}))
        return out

    def tagged_levels(self) -> list[LevelSpec]:
        return [lv for i in range(len(self.stages)) for lv in self.levels_of(i)]

    def stack(self) -> StackSpec:
        """The hive's stack: the stage-tagged levels only, in stage order (the untagged levels are templates)."""
        return StackSpec(levels=tuple(self.tagged_levels()))

    def cap(self, index: int) -> float | None:
        """Stage ``index``'s norm cap, or ``None`` without a budget."""
        b = self.stages[index].budget
        if b.share is not None:
            assert self.total_norm is not None
            return b.share * self.total_norm
        return b.max_norm

    def first_step(self, index: int) -> int:
        """How many optimizer steps the stages before stage ``index`` take (its steps' ledger ticks start there)."""
        return sum(st.steps for st in self.stages[:index])

    def total_steps(self) -> int:
        return self.first_step(len(self.stages))


def is_stages_tree(tree: dict[str, Any]) -> bool:
    """Whether a config tree describes a stages run (it has a ``stages`` section)."""
    return "stages" in tree


def parse_stages_config(data: dict[str, Any] | None, overrides: list[str] | tuple[str, ...] = ()) -> StagesConfig:
    """Validate a stages config tree after ``key.sub=value`` overrides; errors name the dotted field."""
    tree = apply_overrides(data, overrides)
    try:
        return StagesConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_config_error(e)) from None


def load_stages_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> StagesConfig:
    """Read a YAML stages config; errors name the file and the field."""
    data = read_tree(path)
    try:
        return parse_stages_config(data, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
