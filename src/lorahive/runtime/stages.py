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
3. **measure**: on each data set's held-out pairs, behaviour (answer log-probability,
   preference margin and accuracy, label accuracy) with every stage on and with none, the
   exact Shapley value of every stage (a player switching all its levels) on the chosen
   answer's log-probability and on the margin log π(chosen) − log π(rejected), the drop-one
   KL, and the norms and pairwise principal angles of the stages' ΔW.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from lorahive.base import load_base
from lorahive.config import StagesConfig, dump_config
from lorahive.learning import answer_nll, pack_examples
from lorahive.learning.dpo import dpo_loss
from lorahive.observe.influence import player_influence
from lorahive.observe.ledger import Ledger
from lorahive.observe.subspace import delta_factors, delta_norm, pairwise_overlap
from lorahive.runtime.hive import Hive
from lorahive.runtime.rundir import check_dir, make_dirs, prepare_dir
from lorahive.store.files import atomic_write_bytes, atomic_write_text
from lorahive.store.lock import run_lock
from lorahive.suites.pairs import Pair, PairSet, load_pairs

__all__ = ["LEARNER", "build_hive", "load_data", "measure", "run_stages", "start", "train_stage"]

#: The one agent a stages run trains (every stage-tagged level is routed through it).
LEARNER = "learner"
#: Relative slack allowed when checking a norm against its cap (float32 factors).
BUDGET_RTOL = 1e-4

Progress = Callable[[str, int, int], None]  # stage tag, step done, steps


def build_hive(cfg: StagesConfig) -> Hive:
    """The base model with every stage's tagged levels (all empty: B = 0) and the learner."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    loaded = load_base(cfg.base)
    hive = Hive(loaded.model, loaded.tokenizer, cfg.stack(), seed=cfg.seed)
    hive.add_agent(LEARNER)
    return hive


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
    norm = delta_norm(delta_factors(hive.core, levels, LEARNER))
    if cap is None or norm <= cap:
        return norm, norm
    for lv in levels:
        hive.core.scale(lv, hive.core.slots_of(lv, [LEARNER]), cap / norm)
    return norm, delta_norm(delta_factors(hive.core, levels, LEARNER))


def train_stage(hive: Hive, cfg: StagesConfig, index: int, pairs: list[Pair], ledger: Ledger | None = None, step0: int = 0, progress: Progress | None = None) -> dict[str, Any]:
    """Run stage ``index`` of ``cfg`` on the training ``pairs``; its per-step record (loss, norm before/after the budget)."""
    st, tag = cfg.stages[index], cfg.stage_names()[index]
    levels = _levels(cfg, index)
    others = [lv for lv in hive.stack.names() if lv not in levels]
    cap = cfg.cap(index)
    if not pairs:
        raise ValueError(f"stage {tag}: its data sets {st.data} hold no training pairs")
    steps: list[dict[str, Any]] = []
    for k, batch in enumerate(_batches(pairs, st.batch, st.steps, f"{cfg.seed}/{tag}")):
        if st.objective == "sft":
            loss = hive.learn({LEARNER: [(p.prompt, p.chosen) for p in batch]}, steps=1, levels=levels)[LEARNER]
            margin: float | None = None
        else:
            loss, margin = _dpo_step(hive, batch, levels, others, st.beta)
        before, after = _project(hive, levels, cap)
        row = {"loss": loss, "margin": margin, "norm_before": before, "norm": after, "clipped": after < before}
        steps.append(row)
        if ledger is not None:
            ledger.record_event(step0 + k, "stage_step", {"stage": tag, "objective": st.objective, "step": k, **row})
        if progress is not None:
            progress(tag, k + 1, st.steps)
    return {
        "stage": tag,
        "objective": st.objective,
        "data": st.data,
        "levels": levels,
        "cap": cap,
        "steps": steps,
        "norm": steps[-1]["norm"],
        "clipped_steps": sum(bool(s["clipped"]) for s in steps),
        "within_budget": cap is None or all(float(s["norm"]) <= cap * (1 + BUDGET_RTOL) for s in steps),
    }


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


def run_stages(
    cfg: StagesConfig, out: Path | None = None, progress: Progress | None = None, hive: Hive | None = None, data: dict[str, PairSet] | None = None
) -> dict[str, Any]:
    """Train every stage in order and measure; with ``out``, write the ledger, weights and ``metrics.json`` there."""
    started = time.perf_counter()
    hive = hive or build_hive(cfg)
    data = data or load_data(cfg, hive)
    ledger = Ledger(out / "ledger.sqlite") if out is not None else None
    try:
        stages, step0 = [], 0
        for i, st in enumerate(cfg.stages):
            if ledger is not None:
                ledger.record_event(step0, "stage_start", {"stage": cfg.stage_names()[i], "objective": st.objective, "cap": cfg.cap(i), "levels": _levels(cfg, i)})
            pooled = [p for name in st.data for p in data[name].train]
            stages.append(train_stage(hive, cfg, i, pooled, ledger, step0, progress))
            step0 += st.steps
        result = {"order": cfg.stage_names(), "stages": stages, **measure(hive, cfg, data)}
        result["seconds"] = time.perf_counter() - started
        if ledger is not None:
            ledger.record_event(step0, "stages_measured", {"norms": result["norms"]})
    finally:
        if ledger is not None:
            ledger.close()
    if out is not None:
        atomic_write_bytes(out / "stages.safetensors", save(_weights(hive)))
        atomic_write_text(out / "metrics.json", json.dumps(result, indent=1))
    return result


def load_data(cfg: StagesConfig, hive: Hive) -> dict[str, PairSet]:
    """Every data set of ``cfg`` as preference pairs (prompts cut with the hive's tokenizer)."""
    return {name: load_pairs(spec, cfg.seed, hive.tokenizer) for name, spec in cfg.data.items()}


def start(cfg: StagesConfig, out: str | Path, force: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """A stages run into run directory ``out``, refused (nothing written) if it holds a run and not ``force``.

    The model and the data are loaded before anything is written, so a bad base or data file
    is refused with an empty ``out``.
    """
    out = Path(out)
    check_dir(out, force)
    hive = build_hive(cfg)
    data = load_data(cfg, hive)
    make_dirs(out)
    with run_lock(out):
        prepare_dir(out, force)
        atomic_write_text(out / "config.yaml", dump_config(cfg))
        return run_stages(cfg, out, progress, hive, data)
