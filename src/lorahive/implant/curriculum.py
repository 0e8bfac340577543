"""Volatility-budgeted curriculum: micro-variants learned easy → hard, each step kept under a KL budget (seed note 001).

Note 001 asks that a model be moved "without token-volatile chaos": small steps, each checked.
:func:`run_curriculum` orders the variants from the smallest change to the largest (prompt
edit distance, then answer length: the exact prompt's growing target first, rephrasings
after) and learns them ``per_step`` at a time through :meth:`Hive.learn` on one level. After
every step it measures the **step's KL on the probe set**: the mean over the probe prompts of
``KL(before ‖ after)`` of the next-token distribution after each prompt, the state before the
step against the state after it. Over ``budget`` the step is undone (the level's slot —
factors, init snapshot and optimizer state — restored from a snapshot) and retried at half
the step size, down to ``2**-halvings`` of the level's own; a batch still over budget there
is skipped. The step size reached carries on to the next batches. Each attempt is recorded
with its KL, its KL to the base (every level off: the cumulative drift), and the target's NLL.
With ``reference="base"`` the budget bounds the KL to the base instead — the drift all kept
steps add up to — so the probe set ends within it; the step's KL is still recorded.

:func:`run_plain` is the counterpart without ordering or budget: the same examples in a
seeded shuffle, the level's own step size, every step kept. :func:`compare_with_plain` runs
both from the same start, the plain run taking as many steps as the curriculum kept.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from lorahive.implant.measure import mean_kl, probe_logp, target_fit
from lorahive.implant.variants import Variant, make_variants
from lorahive.runtime.hive import Hive

__all__ = ["Comparison", "CurriculumLog", "StepRecord", "compare_with_plain", "curriculum_order", "curriculum_writer", "plain_writer", "run_curriculum", "run_plain"]


@dataclass(frozen=True)
class StepRecord:
    """One learning attempt: which examples, at what step size, what it did to the probe set and the target."""

    step: int  # attempt number, from 0
    examples: tuple[int, ...]  # indices into the log's examples
    lr: float  # the step size used (the level's η·(1 − inertia), scaled)
    probe_kl: float  # mean KL(before ‖ after) on the probe set: what the budget bounds (NaN without a probe set)
    probe_kl_base: float  # mean KL(base ‖ after) on the probe set (NaN without a probe set)
    target_nll: float  # mean NLL of the target's tokens after the original prompt, after the step
    correct: bool  # greedy decoding of the original prompt gives the target, after the step
    accepted: bool  # kept (True) or undone (False)


@dataclass
class CurriculumLog:
    """What a writer did: every attempt, and the target's fit before and after."""

    method: str  # "curriculum" or "plain"
    agent: str
    level: str
    budget: float | None
    examples: list[tuple[str, str]]  # (prompt, answer) in the order learned
    nll_before: float
    correct_before: bool
    steps: list[StepRecord] = field(default_factory=list)
    reference: str = "step"  # what the budget bounds: "step" (KL before ‖ after) or "base" (KL base ‖ after)

    @property
    def accepted_steps(self) -> int:
        return sum(s.accepted for s in self.steps)

    @property
    def undone_steps(self) -> int:
        return sum(not s.accepted for s in self.steps)

    @property
    def kl_series(self) -> list[float]:
        """The probe KL of every kept step, in order."""
        return [s.probe_kl for s in self.steps if s.accepted]

    @property
    def max_kl(self) -> float:
        return max(self.kl_series, default=0.0)

    @property
    def final_nll(self) -> float:
        kept = [s for s in self.steps if s.accepted]
        return kept[-1].target_nll if kept else self.nll_before

    @property
    def final_kl_base(self) -> float:
        """The probe KL to the base after the last kept step: the drift all the steps added up to (0 if none was kept)."""
        kept = [s for s in self.steps if s.accepted]
        return kept[-1].probe_kl_base if kept else 0.0

    @property
    def final_correct(self) -> bool:
        kept = [s for s in self.steps if s.accepted]
        return kept[-1].correct if kept else self.correct_before

    def summary(self) -> dict:
        """The numbers a comparison reports."""
        return {"method": self.method, "steps": self.accepted_steps, "undone": self.undone_steps, "kl_series": self.kl_series, "max_kl": self.max_kl, "final_kl_base": self.final_kl_base,
                "nll_before": self.nll_before, "final_nll": self.final_nll, "correct_before": self.correct_before, "final_correct": self.final_correct}  # fmt: skip

    def to_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary()}


@dataclass(frozen=True)
class Comparison:
    """The curriculum and plain fine-tuning on the same examples, from the same start."""

    curriculum: CurriculumLog
    plain: CurriculumLog

    def summary(self) -> dict:
        return {"curriculum": self.curriculum.summary(), "plain": self.plain.summary()}


def curriculum_order(variants: Sequence[Variant]) -> list[Variant]:
    """Easy → hard: prompt edit distance, then answer length, then kind and text (a total, deterministic order)."""
    return sorted(variants, key=lambda v: (v.distance, len(v.answer_ids), v.kind, v.prompt))


class _Session:
    """The level being written, its snapshot/restore, and the measurements after a step."""

    def __init__(self, hive: Hive, agent: str, level: str, prompt: str, target: str, probe: Sequence[str]) -> None:
        hive.core.agent_index([agent])
        spec = hive.stack.get(level)
        if not spec.trainable:
            raise ValueError(f"level: {level!r} is not trainable; the curriculum writes a trainable level")
        self.hive, self.agent, self.level, self.prompt, self.target, self.probe = hive, agent, level, prompt, target, list(probe)
        self.slots = [hive.core.slot_of(level, agent)]
        self.base = probe_logp(hive, agent, self.probe, levels=[]) if self.probe else None
        self.before = probe_logp(hive, agent, self.probe) if self.probe else None

    def snapshot(self) -> dict[str, torch.Tensor]:
        return self.hive.core.slot_rows(self.level, self.slots)

    def restore(self, snap: dict[str, torch.Tensor]) -> None:
        """Put the slot back exactly as :meth:`snapshot` saw it (factors, init snapshot, optimizer moments and counts)."""
        self.hive.core.load_slot_rows(self.level, self.slots, snap)
        if not any(k.startswith("optim/") for k in snap):  # no optimizer state then: the step's moments go too
            self.hive.core.forget_moments(self.level, self.slots)

    def fit(self) -> tuple[float, bool]:
        nll, ok = target_fit(self.hive, self.agent, self.prompt, self.target)
        values = torch.stack([nll, ok]).tolist()
        return values[0], bool(values[1])

    def step(self, examples: list[tuple[str, str]], scale: float, anchor: float) -> tuple[float, float, float, float, bool]:
        """One :meth:`Hive.learn` step on the level at ``scale`` × its step size; (lr, probe KL, KL to base, target NLL, correct)."""
        state = self.hive.core.states[self.level]
        lr0 = state.lr
        state.lr = lr0 * scale
        try:
            lr = state.step_size
            self.hive.learn({self.agent: examples}, steps=1, levels=[self.level], anchor=anchor)
        finally:
            state.lr = lr0
        nll, ok = target_fit(self.hive, self.agent, self.prompt, self.target)
        if self.base is None or self.before is None:
            values = torch.stack([nll, ok]).tolist()
            return lr, math.nan, math.nan, values[0], bool(values[1])
        self.after = probe_logp(self.hive, self.agent, self.probe)
        kl, kl_base = mean_kl(self.before, self.after), mean_kl(self.base, self.after)
        values = torch.stack([kl, kl_base, nll, ok]).tolist()  # one read-back per step
        return lr, values[0], values[1], values[2], bool(values[3])

    def keep(self) -> None:
        if self.probe:
            self.before = self.after


def _log(method: str, s: _Session, budget: float | None, examples: list[tuple[str, str]]) -> CurriculumLog:
    nll, ok = s.fit()
    return CurriculumLog(method, s.agent, s.level, budget, examples, nll, ok)


def run_curriculum(
    hive: Hive, agent: str, level: str, prompt: str, target: str, variants: Sequence[Variant], probe: Sequence[str], budget: float,
    *, per_step: int = 5, rounds: int = 2, halvings: int = 4, anchor: float = 0.0, reference: str = "step",
) -> CurriculumLog:  # fmt: skip
    """Write ``prompt`` → ``target`` into ``agent``'s slot of ``level`` through ``variants``, every kept step's probe KL ≤ ``budget``.

    ``reference``: ``"step"`` bounds each step's KL (before ‖ after), ``"base"`` the KL to the
    base after each step (the cumulative drift).

    The ordered variants are learned ``per_step`` per step, ``rounds`` times over. ``anchor``
    is passed to :meth:`Hive.learn` (the foundation anchor). Returns every attempt's record.
    """
    if not budget > 0 or not math.isfinite(budget):
        raise ValueError(f"budget must be a finite KL > 0, got {budget}")
    if reference not in ("step", "base"):
        raise ValueError(f"reference must be 'step' (each step's KL) or 'base' (the KL to the base), got {reference!r}")
    if not probe:
        raise ValueError("probe: give at least one probe prompt (unrelated text the step must not disturb)")
    _check_pacing(per_step, rounds, halvings, variants)
    s = _Session(hive, agent, level, prompt, target, probe)
    ordered = curriculum_order(variants)
    log = _log("curriculum", s, budget, [v.example for v in ordered])
    log.reference = reference
    batches = [list(range(i, min(i + per_step, len(ordered)))) for i in range(0, len(ordered), per_step)] * rounds
    scale, floor = 1.0, 2.0**-halvings
    for batch in batches:
        snap = s.snapshot()
        while True:
            lr, kl, kl_base, nll, ok = s.step([log.examples[i] for i in batch], scale, anchor)
            accepted = (kl if reference == "step" else kl_base) <= budget  # NaN (a non-finite probe) is never accepted
            log.steps.append(StepRecord(len(log.steps), tuple(batch), lr, kl, kl_base, nll, ok, accepted))
            if accepted:
                s.keep()
                break
            s.restore(snap)
            if scale <= floor:
                break  # this batch does not fit the budget even at the smallest step: skipped
            scale /= 2
    return log


def run_plain(
    hive: Hive, agent: str, level: str, prompt: str, target: str, examples: Sequence[tuple[str, str]], steps: int,
    *, per_step: int = 5, seed: int = 0, probe: Sequence[str] = (), anchor: float = 0.0,
) -> CurriculumLog:  # fmt: skip
    """Plain fine-tuning: ``steps`` steps over ``examples`` in a seeded shuffle (cycled), the level's own step size, nothing undone.

    With ``probe`` prompts each step's probe KL is measured as in :func:`run_curriculum`
    (not acted on); without, the KL fields are NaN.
    """
    if steps < 0:
        raise ValueError(f"steps must be ≥ 0, got {steps}")
    if per_step < 1:
        raise ValueError(f"per_step must be ≥ 1, got {per_step}")
    if not examples:
        raise ValueError("examples: give at least one (prompt, answer) pair")
    s = _Session(hive, agent, level, prompt, target, probe)
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    log = _log("plain", s, None, shuffled)
    for t in range(steps):
        batch = [(t * per_step + j) % len(shuffled) for j in range(min(per_step, len(shuffled)))]
        lr, kl, kl_base, nll, ok = s.step([shuffled[i] for i in batch], 1.0, anchor)
        log.steps.append(StepRecord(t, tuple(batch), lr, kl, kl_base, nll, ok, True))
        s.keep()
    return log


def _check_pacing(per_step: int, rounds: int, halvings: int, variants: Sequence[Variant]) -> None:
    for name, value, low in (("per_step", per_step, 1), ("rounds", rounds, 1), ("halvings", halvings, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")
    if not variants:
        raise ValueError("variants: give at least one variant")


def curriculum_writer(
    hive: Hive, agent: str, level: str, prompt: str, target: str, probe: Sequence[str], budget: float, seed: int, variants: int = 50,
    *, per_step: int = 5, rounds: int = 2, halvings: int = 4, anchor: float = 0.0, keep: Sequence[str] = (), reference: str = "step",
) -> CurriculumLog:  # fmt: skip
    """Write one fact (``prompt`` → ``target``) into ``agent``'s slot of ``level`` through the budgeted curriculum of ``variants`` micro-variants.

    ``keep``: phrases of the prompt the variants leave whole (:func:`make_variants`), e.g. the subject.
    """
    vs = make_variants(hive, prompt, target, n=variants, seed=seed, keep=tuple(keep))
    return run_curriculum(hive, agent, level, prompt, target, vs, probe, budget, per_step=per_step, rounds=rounds, halvings=halvings, anchor=anchor, reference=reference)


def plain_writer(hive: Hive, agent: str, level: str, prompt: str, target: str, steps: int, seed: int, *, probe: Sequence[str] = (), anchor: float = 0.0) -> CurriculumLog:
    """Write one fact by plain fine-tuning: ``steps`` steps on the single example ``(prompt, target)``.

    ``seed`` orders the examples as in :func:`run_plain` (one example here: kept for a
    signature that matches :func:`curriculum_writer`).
    """
    return run_plain(hive, agent, level, prompt, target, [(prompt, target)], steps, per_step=1, seed=seed, probe=probe, anchor=anchor)


def compare_with_plain(
    hive: Hive, agent: str, level: str, prompt: str, target: str, probe: Sequence[str], budget: float, seed: int, variants: int = 50,
    *, per_step: int = 5, rounds: int = 2, halvings: int = 4, keep: Sequence[str] = (), reference: str = "step",
) -> Comparison:  # fmt: skip
    """The curriculum, then — from the same start — plain fine-tuning on the same variants for as many steps as the curriculum kept.

    The hive is left as it was found (the level's slot restored after each run).
    """
    vs = make_variants(hive, prompt, target, n=variants, seed=seed, keep=tuple(keep))
    s = _Session(hive, agent, level, prompt, target, ())
    start = s.snapshot()
    try:
        cur = run_curriculum(hive, agent, level, prompt, target, vs, probe, budget, per_step=per_step, rounds=rounds, halvings=halvings, reference=reference)
        s.restore(start)
        plain = run_plain(hive, agent, level, prompt, target, [v.example for v in vs], cur.accepted_steps, per_step=per_step, seed=seed, probe=probe)
    finally:
        s.restore(start)
    return Comparison(cur, plain)
