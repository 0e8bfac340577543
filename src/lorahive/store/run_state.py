"""The schema of a run's ``checkpoint/state.json`` bookkeeping, checked in full before use.

A checkpoint's hashes prove only that its files are the ones its manifest names; a re-sealed
state.json (hashes recomputed) can hold anything. :func:`validate_run_state` checks every
field's type and range, and that the agents, task types and ticks agree with the run's
config, and raises :class:`~lorahive.store.checkpoint.CheckpointError` naming the field.
Level states are checked separately by :meth:`lorahive.core.LevelState.from_dict`.
:func:`validate_stages_state` does the same for a stages run's checkpoint (runtime/stages.py):
where the run stands (stage, step), every step's record so far, and the config it started with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from lorahive.store.checkpoint import CheckpointError

__all__ = ["RunState", "StageStep", "StagesState", "validate_run_state", "validate_stages_state"]

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
Unit = Field(ge=0.0, le=1.0)


class AgentState(BaseModel):
    model_config = _STRICT

    task_type: StrictStr
    reputation: float = Field(ge=0.0, le=1.0)
    solved: StrictInt = Field(ge=0)


class LedgerMark(BaseModel):
    """Where the ledger stood when the checkpoint was written (see :mod:`lorahive.observe.ledger`)."""

    model_config = _STRICT

    tick: StrictInt | None = Field(ge=0)
    max_ids: dict[str, StrictInt]
    digest: StrictStr = Field(pattern=r"^[0-9a-f]{64}$")


class RunState(BaseModel):
    """state.json as a run writes it (agents, stack and level_states are the checkpoint's own fields)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    tick: StrictInt = Field(ge=0)
    accepted: StrictInt = Field(ge=0)
    rejected: StrictInt = Field(ge=0)
    agents: list[StrictStr]
    level_states: dict[str, Any]
    stack: dict[str, Any] | None = None  # the level stack (checked by store/checkpoint.py)
    agents_state: dict[str, AgentState]
    attribution: dict[str, StrictFloat | StrictInt] = Field(default_factory=dict)
    method: dict[str, Any] = Field(default_factory=dict)
    mechanisms: dict[str, dict[str, Any]] = Field(default_factory=dict)  # each mechanism's plain-JSON state, by name
    quality_before: dict[str, dict[str, float]]
    elapsed: float = Field(default=0.0, ge=0.0)
    ppl_before: dict[str, float] | None = None
    cl_R: list[list[float | None]] | None = None
    ledger: LedgerMark | None = None
    config: dict[str, Any] | None = None


def _field(loc: Sequence[Any]) -> str:
    return ".".join(str(x) for x in loc) or "state"


def validate_run_state(state: dict[str, Any], file: Path, agents: list[str], task_types: list[str] | None, ticks: int, order: list[str] | None = None) -> RunState:
    """Check ``state`` against the schema and the run: raise CheckpointError naming the field."""
    try:
        st = RunState.model_validate(state)
    except ValidationError as e:
        err = e.errors()[0]
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {str(got)[:60]!r})"
        raise CheckpointError(f"{file}: {_field(err['loc'])}: {err['msg']}{shown}") from None

    def bad(field: str, msg: str) -> CheckpointError:
        return CheckpointError(f"{file}: {field}: {msg}")

    if st.agents != agents:
        raise bad("agents", f"{st.agents[:5]} are not this run's agents {agents[:5]}")
    if sorted(st.agents_state) != sorted(agents):
        raise bad("agents_state", f"names {sorted(st.agents_state)[:5]} are not this run's agents {agents[:5]}")
    for name, a in st.agents_state.items():
        if task_types is not None and a.task_type not in task_types:
            raise bad(f"agents_state.{name}.task_type", f"{a.task_type[:60]!r} is not a task type of this run ({task_types})")
    if st.tick > ticks:
        raise bad("tick", f"{st.tick} is beyond the run's {ticks} ticks")
    for name, per_type in st.quality_before.items():
        if name not in agents:
            raise bad("quality_before", f"{name[:60]!r} is not an agent of this run")
        for t, q in per_type.items():
            if (task_types is not None and t not in task_types) or not 0.0 <= q <= 1.0:
                raise bad(f"quality_before.{name}.{t[:60]}", f"must be a task type of this run with a quality in [0, 1] (got {q})")
    for name in st.attribution:
        if name not in agents:
            raise bad("attribution", f"{name[:60]!r} is not an agent of this run")
    if st.ppl_before is not None:
        for name, v in st.ppl_before.items():
            if name not in agents or not v > 0.0:
                raise bad(f"ppl_before.{name[:60]}", f"must be an agent of this run with a positive perplexity (got {v})")
    if order is not None:
        if st.cl_R is None or len(st.cl_R) != len(order) + 1 or any(len(row) != len(order) for row in st.cl_R):
            raise bad("cl_R", f"must be a {len(order) + 1} × {len(order)} accuracy matrix")
        if any(v is not None and not 0.0 <= v <= 1.0 for row in st.cl_R for v in row):
            raise bad("cl_R", "accuracies must lie in [0, 1]")
    elif st.cl_R is not None:
        raise bad("cl_R", "present, but the run has no stream")
    return st


class StageStep(BaseModel):
    """One optimizer step of a stage as the ledger and metrics.json hold it (a skipped step's loss is NaN)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    loss: float
    margin: float | None = None
    norm_before: float = Field(ge=0.0, allow_inf_nan=False)
    norm: float = Field(ge=0.0, allow_inf_nan=False)
    clipped: bool


class StagesState(BaseModel):
    """state.json of a stages run: ``step`` steps of stage ``stage`` done (``stage`` = the number of stages: all done)."""

    model_config = _STRICT

    kind: Literal["stages"]
    tick: StrictInt = Field(ge=0)
    stage: StrictInt = Field(ge=0)
    step: StrictInt = Field(ge=0)
    steps: list[list[StageStep]]
    agents: list[StrictStr]
    level_states: dict[str, Any]
    stack: dict[str, Any] | None = None
    elapsed: float = Field(default=0.0, ge=0.0)
    ledger: LedgerMark | None = None
    config: dict[str, Any]


def validate_stages_state(state: dict[str, Any], file: Path, stage_steps: Sequence[int], config: dict[str, Any]) -> StagesState:
    """Check a stages run's ``state`` against the schema and its config (``stage_steps``: each stage's steps)."""
    try:
        st = StagesState.model_validate(state)
    except ValidationError as e:
        err = e.errors()[0]
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {str(got)[:60]!r})"
        raise CheckpointError(f"{file}: {_field(err['loc'])}: {err['msg']}{shown}") from None
    was, now = _flat(st.config), _flat(config)
    changed = sorted(k for k in was.keys() | now.keys() if was.get(k) != now.get(k))
    if changed:
        k = changed[0]
        raise CheckpointError(
            f"{file}: config.yaml: {', '.join(changed[:5])} changed since the checkpoint ({k}: {str(was.get(k))[:60]} → {str(now.get(k))[:60]});"
            " a stages run resumes with the config it started with"
        )
    n = len(stage_steps)
    if st.stage > n or (st.stage == n and st.step != 0) or (st.stage < n and st.step >= stage_steps[st.stage]):
        raise CheckpointError(f"{file}: stage {st.stage}, step {st.step} is not a place in this run's {n} stages of {list(stage_steps)} steps")
    begun = st.stage + (1 if st.step else 0)
    want = [*stage_steps[: st.stage], *([st.step] if st.step else [])]
    if [len(s) for s in st.steps] != want:
        raise CheckpointError(f"{file}: steps: {[len(s) for s in st.steps]} step records per stage; {begun} stages begun should hold {want}")
    if st.tick != sum(want):
        raise CheckpointError(f"{file}: tick: {st.tick} is not the {sum(want)} steps done")
    return st


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.0.b": v}`` for every leaf of nested mappings and lists (an empty one is a leaf)."""
    if isinstance(tree, dict | list) and tree:
        items = tree.items() if isinstance(tree, dict) else enumerate(tree)
        return {k: v for key, sub in items for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}
