"""Ordered training stages over one frozen LM, each with its own objective, scope and budget; then who did what.

A stages run (config: :class:`~lorahive.config.StagesConfig`, docs/stages.md) trains one
learner through its stages in order. Stage i writes only its stage-tagged copies of the
levels it names (``<level>_<tag>``, built by :meth:`StagesConfig.levels_of` with its layer
scope), so at any time the model is the base plus one exactly known ΔW per stage:

1. **train**: ``sft`` steps go through :meth:`Hive.learn` on the chosen answers; ``dpo``
   steps minimise the DPO loss (learning/dpo.py) with the model as the stage found it as the
   reference — the same hive with the stage's own levels switched off, which is exact,
   since no other stage writes while it runs;
2. **budget**: after every step the stage's ΔW is scaled back onto its norm ball when it
   left it (:meth:`HiveCore.scale`; exact, ΔW is linear in B), and the step is in the ledger;
3. **checkpoint**: every ``checkpoint_every`` steps and at every stage's end (and once before
   the first step) the levels, their optimizer state and where the run stands go to
   ``checkpoint/`` (store/checkpoint.py), so :func:`resume` continues a killed run to the
   same weights, ledger rows and metrics as an uninterrupted one;
4. **measure**: on each data set's held-out pairs, behaviour (answer log-probability,
   preference margin and accuracy, label accuracy) with every stage on and with none, the
   exact Shapley value of every stage (a player switching all its levels) on the chosen
   answer's log-probability and on the margin log π(chosen) − log π(rejected), the drop-one
   KL, and the norms and pairwise principal angles of the stages' ΔW.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import nn

from lorahive.base import load_base
from lorahive.config import ConfigError, StagesConfig, dump_config, load_stages_config
from lorahive.config.levels import block_of
from lorahive.learning import answer_nll, pack_examples
from lorahive.learning.dpo import dpo_loss
from lorahive.observe.influence import player_influence
from lorahive.observe.ledger import Ledger, sha256_of
from lorahive.observe.subspace import delta_factors, delta_norm, pairwise_overlap
from lorahive.runtime.hive import Hive
from lorahive.runtime.precheck import THREADS_PER_CPU
from lorahive.runtime.rundir import (
    RunDirError,
    check_dir,
    starting,
)
from lorahive.store import checkpoint
from lorahive.store.files import atomic_write_bytes, atomic_write_text
from lorahive.store.lock import run_lock
from lorahive.store.run_state import StagesState, validate_stages_state
from lorahive.suites.pairs import Pair, PairsError, PairSet, load_pairs

__all__ = ["LEARNER", "StagesRun", "absolute_paths", "build_hive", "check_scope", "load_data", "measure", "prepare", "resume", "run_stages", "stage_record", "start", "train_step"]

#: The one agent a stages run trains (every stage-tagged level is routed through it).
LEARNER = "learner"
#: Relative slack allowed when checking a norm against its cap (float32 factors).
BUDGET_RTOL = 1e-4

Progress = Callable[[str, int, int], None]  # stage tag, step done, steps


# ---------------------------------------------------------------------- what is checked before anything is written
def check_scope(cfg: StagesConfig, model: nn.Module) -> None:
    """Every stage's targets name Linear modules of ``model`` and its blocks are blocks of it; ConfigError naming the field."""
    paths = [p for p, m in model.named_modules() if isinstance(m, nn.Linear)]
    leaves = sorted({p.rsplit(".", 1)[-1] for p in paths})
    blocks = sorted({b for p in paths if (b := block_of(p)) is not None})
    for i, st in enumerate(cfg.stages):
        unknown = [t for t in st.scope.targets if t not in leaves]
        if unknown:
            raise ConfigError(f"stages.{i}.scope.targets: {unknown} name no Linear module of the model; its projections are {leaves}")
        outside = [b for b in st.scope.blocks or [] if b not in blocks]
        if outside:
            shown = f"{blocks[0]}–{blocks[-1]}" if blocks else "none"
            raise ConfigError(f"stages.{i}.scope.blocks: {outside} are not blocks of the model (its blocks: {shown})")
        if st.scope.blocks is not None and not any(p.rsplit(".", 1)[-1] in st.scope.targets and block_of(p) in st.scope.blocks for p in paths):
            raise ConfigError(f"stages.{i}.scope: targets {st.scope.targets} in blocks {st.scope.blocks} match no Linear module of the model")


def build_hive(cfg: StagesConfig) -> Hive:
    """The base model with every stage's tagged levels (all empty: B = 0) and the learner; bad values raise ConfigError."""
    cpus = os.cpu_count() or 1
    if cfg.threads is not None and cfg.threads > THREADS_PER_CPU * cpus:
        raise ConfigError(f"threads: {cfg.threads} is more than {THREADS_PER_CPU} × the {cpus} CPU cores of this machine")
    if not cfg.base.startswith("embedded:") and not Path(cfg.base).is_dir():
        raise ConfigError(f"base: no model directory at {cfg.base} (pass embedded:NAME or a local Hugging Face model directory)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        loaded = load_base(cfg.base)
    except (ValueError, OSError) as e:
        raise ConfigError(f"base: {e}") from None
    check_scope(cfg, loaded.model)
    hive = Hive(loaded.model, loaded.tokenizer, cfg.stack(), seed=cfg.seed)
    hive.add_agent(LEARNER)
    return hive


def load_data(cfg: StagesConfig, hive: Hive) -> dict[str, PairSet]:
    """Every data set of ``cfg`` as preference pairs (prompts cut with the hive's tokenizer); ConfigError naming ``data.<name>.<field>``."""
    out = {}
    for name, spec in cfg.data.items():
        try:
            out[name] = load_pairs(spec, cfg.seed, hive.tokenizer)
        except PairsError as e:
            raise ConfigError(f"data.{name}.{e}") from None
        except (ValueError, OSError) as e:
            raise ConfigError(f"data.{name}: {e}") from None
    return out


def prepare(cfg: StagesConfig) -> tuple[Hive, dict[str, PairSet]]:
    """The hive and the data of ``cfg``, every value checked against the model and the data; writes nothing."""
    hive = build_hive(cfg)
    return hive, load_data(cfg, hive)


# ---------------------------------------------------------------------- one step
def _levels(cfg: StagesConfig, index: int) -> list[str]:
    return [lv.name for lv in cfg.levels_of(index)]


def _batches(pairs: list[Pair], size: int, steps: int, key: str) -> list[list[Pair]]:
    """``steps`` batches cycling through a shuffle of ``pairs`` seeded by ``key`` (the stage's tag, not its index)."""
    order = list(range(len(pairs)))
    random.Random(key).shuffle(order)
    flat = [pairs[order[i % len(order)]] for i in range(size * steps)]
    return [flat[i * size : (i + 1) * size] for i in range(steps)]


def _logp(hive: Hive, rows: Sequence[tuple[str, str]], levels: Sequence[str] | None) -> torch.Tensor:
    """Summed answer log-probability of each (prompt, answer) row for the learner, (N,) on the CPU."""
    return -hive.row_nll([(LEARNER, p, a) for p, a in rows], levels=levels)


def _dpo_step(hive: Hive, batch: list[Pair], levels: list[str], others: list[str], beta: float) -> tuple[float, float]:
    """One DPO step on ``levels``; the reference is the hive with only ``others`` on. Returns (loss, mean margin)."""
    n = len(batch)
    rows = [(p.prompt, p.chosen) for p in batch] + [(p.prompt, p.rejected) for p in batch]
    ref = _logp(hive, rows, others).to(hive.device)  # (2n,), no gradient
    packed = pack_examples(hive.tokenizer, rows, hive.core.max_length).to(hive.device)
    core = hive.core
    hive.model.zero_grad(set_to_none=True)
    with core.routing.use(core.route([LEARNER] * (2 * n), training=levels)):
        total, _ = answer_nll(hive.model, packed)  # (2n,) summed NLL
    policy = -total
    loss, margin = dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], beta)
    mean = loss.mean()
    bad = (~torch.isfinite(mean)).float().reshape(1)
    mean.backward()
    for lv in levels:
        core.step(lv, None, core.slots_of(lv, [LEARNER]), found_inf=bad)
    hive.model.zero_grad(set_to_none=True)
    return float(mean.detach()), float(margin.mean()) / beta


def _project(hive: Hive, levels: list[str], cap: float | None) -> tuple[float, float]:
    """The stage's ‖ΔW‖ before and after scaling it back onto its budget ``cap`` (no cap: unchanged)."""
    norm = delta_norm(delta_factors(hive.core, levels, LEARNER, device=None))  # on the banks' device: one read-back, not two per module
    if cap is None or norm <= cap:
        return norm, norm
    for lv in levels:
        hive.core.scale(lv, hive.core.slots_of(lv, [LEARNER]), cap / norm)
    return norm, delta_norm(delta_factors(hive.core, levels, LEARNER, device=None))


def train_step(hive: Hive, cfg: StagesConfig, index: int, batch: list[Pair]) -> dict[str, Any]:
    """One optimizer step of stage ``index`` on ``batch``, then its budget; the step's record (loss, norm before/after)."""
    st = cfg.stages[index]
    levels = _levels(cfg, index)
    if st.objective == "sft":
        loss = hive.learn({LEARNER: [(p.prompt, p.chosen) for p in batch]}, steps=1, levels=levels)[LEARNER]
        margin: float | None = None
    else:
        others = [lv for lv in hive.stack.names() if lv not in levels]
        loss, margin = _dpo_step(hive, batch, levels, others, st.beta)
    before, after = _project(hive, levels, cfg.cap(index))
    return {"loss": loss, "margin": margin, "norm_before": before, "norm": after, "clipped": after < before}


def stage_record(cfg: StagesConfig, index: int, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """What metrics.json says of stage ``index`` after ``steps`` (its steps so far): norm, cap, clipped steps, budget held."""
    st, cap = cfg.stages[index], cfg.cap(index)
    return {
        "stage": cfg.stage_names()[index],
        "objective": st.objective,
        "data": st.data,
        "levels": _levels(cfg, index),
        "cap": cap,
        "steps_planned": st.steps,
        "steps": steps,
        "norm": steps[-1]["norm"] if steps else 0.0,
        "clipped_steps": sum(bool(s["clipped"]) for s in steps),
        "within_budget": cap is None or all(float(s["norm"]) <= cap * (1 + BUDGET_RTOL) for s in steps),
    }


# ---------------------------------------------------------------------- measuring
def _behaviour(hive: Hive, pairs: PairSet, levels: Sequence[str] | None, batch: int) -> dict[str, float]:
    """Answer log-probabilities, margin, preference accuracy (and label accuracy) on the held-out pairs."""
    chosen = _logp(hive, [(p.prompt, p.chosen) for p in pairs.eval], levels)
    rejected = _logp(hive, [(p.prompt, p.rejected) for p in pairs.eval], levels)
    margin = chosen - rejected
    out = {
        "logp_chosen": float(chosen.mean()),
        "logp_rejected": float(rejected.mean()),
        "margin": float(margin.mean()),
        "pref_accuracy": float((margin > 0).double().mean()),
    }
    if pairs.labels:
        nll = hive.option_nll([(LEARNER, p.prompt) for p in pairs.eval], list(pairs.labels), levels=levels, chunk=batch)  # (N, L)
        picked = [pairs.labels[int(i)] for i in nll.argmin(1)]
        out["label_accuracy"] = sum(a == p.chosen for a, p in zip(picked, pairs.eval, strict=True)) / len(pairs.eval)
    return out


def measure(hive: Hive, cfg: StagesConfig, data: dict[str, PairSet], trained: Sequence[int] | None = None) -> dict[str, Any]:
    """Behaviour, per-stage Shapley values and drop-one KL on every data set, and the stages' ΔW norms and overlaps."""
    tags = cfg.stage_names()
    idx = list(range(len(cfg.stages)) if trained is None else trained)
    players = {tags[i]: _levels(cfg, i) for i in idx}
    per_data: dict[str, Any] = {}
    for name, pairs in data.items():
        agents = [LEARNER] * len(pairs.eval)
        on_c = player_influence(hive.core, [(p.prompt, p.chosen) for p in pairs.eval], agents, players, cfg.max_rows)
        on_r = player_influence(hive.core, [(p.prompt, p.rejected) for p in pairs.eval], agents, players, cfg.max_rows)
        phi_margin = (on_c.per_example - on_r.per_example).mean(0)  # (n,): Shapley is linear in the game
        per_data[name] = {
            "after": _behaviour(hive, pairs, None, cfg.eval_batch),
            "before": _behaviour(hive, pairs, [], cfg.eval_batch),
            "shapley_logp": on_c.shapley,
            "shapley_margin": {t: float(phi_margin[i]) for i, t in enumerate(on_c.levels)},
            "shares_logp": on_c.shares(),
            "kl_drop": on_c.kl,
            "eval_pairs": len(pairs.eval),
        }
    factors = {tags[i]: delta_factors(hive.core, _levels(cfg, i), LEARNER) for i in idx}
    return {
        "data": per_data,
        "norms": {t: delta_norm(f) for t, f in factors.items()},
        "overlap": pairwise_overlap(factors),
    }


def _weights(hive: Hive) -> dict[str, torch.Tensor]:
    """Every stage-tagged level's factors, keyed ``level/slot/module/A|B`` (STYLE.md #10)."""
    out = {}
    for lv in hive.stack.names():
        slot = hive.core.slot_of(lv, LEARNER)
        for path, bank in hive.core.named_banks(lv):
            out[f"{lv}/{slot}/{path}/A"] = bank.A[slot].detach().cpu().contiguous()
            out[f"{lv}/{slot}/{path}/B"] = bank.B[slot].detach().cpu().contiguous()
    return out


# ---------------------------------------------------------------------- the run
@dataclass
class StagesRun:
    """A live stages run: where it stands (``step`` steps of stage ``stage`` done) and every step's record so far."""

    cfg: StagesConfig
    hive: Hive
    data: dict[str, PairSet]
    out: Path | None = None
    ledger: Ledger | None = None
    stage: int = 0
    step: int = 0
    steps: list[list[dict[str, Any]]] = field(default_factory=list)
    elapsed: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    @property
    def done(self) -> int:
        """Optimizer steps done over all stages (the ledger tick of the next row)."""
        return self.cfg.first_step(self.stage) + self.step

    def seconds(self) -> float:
        return self.elapsed + time.perf_counter() - self.started

    def records(self) -> list[dict[str, Any]]:
        return [stage_record(self.cfg, i, s) for i, s in enumerate(self.steps)]


def _config_record(cfg: StagesConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def save_checkpoint(run: StagesRun) -> Path:
    """The run's levels, optimizer state and where it stands, atomically (store/checkpoint.py), with a ledger row."""
    assert run.out is not None and run.ledger is not None
    state = {
        "kind": "stages",
        "tick": run.done,
        "stage": run.stage,
        "step": run.step,
        "steps": run.steps,
        "elapsed": run.seconds(),
        "ledger": run.ledger.mark(),
        "config": _config_record(run.cfg),
    }
    path = checkpoint.save(run.out, run.hive.core, state, {})
    run.ledger.record_checkpoint(run.done, path, sha256_of(path / "manifest.json"))
    atomic_write_text(run.out / "metrics.json", json.dumps(_progress_metrics(run), indent=1))
    return path


def _progress_metrics(run: StagesRun) -> dict[str, Any]:
    """metrics.json while the run is under way: the stages' records so far."""
    cfg = run.cfg
    return {"order": cfg.stage_names(), "finished": False, "steps_done": run.done, "steps_total": cfg.total_steps(), "stages": run.records(), "seconds": run.seconds()}


def _train(run: StagesRun, progress: Progress | None) -> None:
    """Every remaining step of every stage, in order: step, budget, ledger row, checkpoint when due."""
    cfg, hive, ledger = run.cfg, run.hive, run.ledger
    tags = cfg.stage_names()
    while run.stage < len(cfg.stages):
        i, st = run.stage, cfg.stages[run.stage]
        pooled = [p for name in st.data for p in run.data[name].train]
        if not pooled:
            raise ValueError(f"stage {tags[i]}: its data sets {st.data} hold no training pairs")
        if run.step == 0:
            run.steps.append([])
            if ledger is not None:
                ledger.record_event(run.done, "stage_start", {"stage": tags[i], "objective": st.objective, "cap": cfg.cap(i), "levels": _levels(cfg, i)})
        batches = _batches(pooled, st.batch, st.steps, f"{cfg.seed}/{tags[i]}")
        for k in range(run.step, st.steps):
            row = train_step(hive, cfg, i, batches[k])
            if ledger is not None:
                ledger.record_event(run.done, "stage_step", {"stage": tags[i], "objective": st.objective, "step": k, **row})
            run.steps[i].append(row)
            run.stage, run.step = (i, k + 1) if k + 1 < st.steps else (i + 1, 0)
            if run.out is not None and (run.step == 0 or run.done % cfg.checkpoint_every == 0):
                save_checkpoint(run)
            if progress is not None:
                progress(tags[i], k + 1, st.steps)


def _finish(run: StagesRun) -> dict[str, Any]:
    """Measure, then (in a run directory) the ledger's last row, the weights and metrics.json."""
    cfg = run.cfg
    result = {"order": cfg.stage_names(), "finished": True, "steps_done": run.done, "steps_total": cfg.total_steps(), "stages": run.records(), **measure(run.hive, cfg, run.data)}
    result["seconds"] = run.seconds()
    if run.out is not None and run.ledger is not None:
        run.ledger.record_event(run.done, "stages_measured", {"norms": result["norms"]})
        atomic_write_bytes(run.out / "stages.safetensors", save(_weights(run.hive)))
        atomic_write_text(run.out / "metrics.json", json.dumps(result, indent=1))
    return result


def _loop(run: StagesRun, progress: Progress | None) -> dict[str, Any]:
    _train(run, progress)
    return _finish(run)


def run_stages(
    cfg: StagesConfig, out: Path | None = None, progress: Progress | None = None, hive: Hive | None = None, data: dict[str, PairSet] | None = None
) -> dict[str, Any]:
    """Train every stage in order and measure; with ``out`` (a folder :func:`start` prepared), with ledger and checkpoints there."""
    if hive is None:
        hive, data = prepare(cfg)
    data = data or load_data(cfg, hive)
    ledger = Ledger(out / "ledger.sqlite") if out is not None else None
    run = StagesRun(cfg, hive, data, out, ledger)
    try:
        if out is not None:
            save_checkpoint(run)  # before the first step: a run killed from here on resumes
        return _loop(run, progress)
    finally:
        if ledger is not None:
            ledger.close()


def absolute_paths(cfg: StagesConfig) -> StagesConfig:
    """``cfg`` with every data set's ``root``/``path`` made absolute (from the working directory), as config.yaml keeps them."""
    data = {}
    for name, spec in cfg.data.items():
        update = {k: str(Path(v).resolve()) for k in ("root", "path") if isinstance(v := getattr(spec, k), str)}
        data[name] = spec.model_copy(update=update)
    return cfg.model_copy(update={"data": data})


def start(cfg: StagesConfig, out: str | Path, force: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """A stages run into run directory ``out``, refused (nothing written) if it holds a run and not ``force``.

    The model and the data are loaded and every value checked against them before anything is
    written, so a bad base, scope or data set is refused with ``out`` untouched; a failure
    before the first checkpoint removes what this call created.
    """
    out, cfg = Path(out), absolute_paths(cfg)
    check_dir(out, force)
    hive, data = prepare(cfg)
    with starting(out, force, dump_config(cfg)):
        return run_stages(cfg, out, progress, hive, data)


# ---------------------------------------------------------------------- resume
def resume(out: str | Path, progress: Progress | None = None) -> dict[str, Any]:
    """Continue the stages run in ``out`` from its last good checkpoint to its end; same result as an uninterrupted run.

    The ledger is checked against the checkpoint's mark and its rows after the mark are
    removed (they are written again); the config must be the one the run started with.
    """
    out = Path(out)
    if not (out / "config.yaml").is_file():
        raise RunDirError(f"{out} holds no run (no config.yaml)")
    with run_lock(out):
        cfg = load_stages_config(str(out / "config.yaml"))
        checkpoint.locate(out)  # fail before loading the model when there is nothing to resume
        if not (out / "ledger.sqlite").is_file():
            raise RunDirError(f"{out / 'ledger.sqlite'} is missing: the run's history is part of the run; restore it (a resume never starts a new ledger)")
        hive, data = prepare(cfg)
        ledger = Ledger(out / "ledger.sqlite")
        try:
            run = _restore(StagesRun(cfg, hive, data, out, ledger))
            return _loop(run, progress)
        finally:
            ledger.close()


def _restore(run: StagesRun) -> StagesRun:
    """Load the last good checkpoint into ``run`` and bring the ledger back to it."""
    assert run.out is not None and run.ledger is not None
    cfg = run.cfg
    steps = [st.steps for st in cfg.stages]

    def check(state: dict[str, Any], file: Path) -> object:
        return validate_stages_state(state, file, steps, _config_record(cfg))

    loaded = checkpoint.load(run.out, run.hive.core, check)
    st = StagesState.model_validate(loaded.state)
    if st.ledger is not None:
        mark = st.ledger.model_dump()
        run.ledger.verify_mark(mark)
        run.ledger.rollback_to_mark(mark)
    run.stage, run.step, run.elapsed = st.stage, st.step, st.elapsed
    run.steps = [[s.model_dump() for s in rows] for rows in st.steps]
    ckpt = checkpoint.locate(run.out)
    run.ledger.record_checkpoint(run.done, ckpt, sha256_of(ckpt / "manifest.json"))  # its row was written after the mark
    run.ledger.record_event(run.done, "resume", {"stage": st.stage, "step": st.step})
    return run
