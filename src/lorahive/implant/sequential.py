"""The sequential implant driver: CounterFact edits one after another into one hive, scored at checkpoints.

Methods (each on a fresh hive over the same base; one agent, ``editor``):

* ``hive`` — two levels restricted to a band of decoder blocks (``band``, default blocks
  4–8 of SmolLM2's 30): a fast per-edit slot (``edit``, task scope, rank ``rank``) and a
  slow memory (``memory``, agent scope, rank ``memory_rank``). Each edit is written into the
  per-edit slot by the *writer* (default :class:`PlainWriter`; ``curriculum`` plugs in
  part A's), then every ``consolidate_every`` edits the slot is **consolidated**: its term
  ``(a/r)·B·A`` is added to the memory with :meth:`HiveCore.add_delta` (re-factored to the
  memory's rank by truncated SVD — exact when ``memory_rank`` is the hidden size, the
  default — the same primitive migration uses, DESIGN.md §3) and the slot is reset
  (:meth:`HiveCore.reset`) for the next edit. The parameters held never grow with edits.
  The stability test of :mod:`lorahive.mechanisms.consolidation` (a pattern's subspace
  held for N checks) is not waited for: a written edit is one finished pattern, moved whole.
* ``lora`` — the plain baseline: one ordinary LoRA level over every block and every
  projection, each edit fine-tuned into it for exactly ``steps`` steps on its prompt,
  no band, no anchor, no early stop, no consolidation.
* ``unedited`` — the base model's scores on the same edits; nothing is written.

After each checkpoint count of edits, all edits made so far are scored
(:class:`~lorahive.implant.edits.EditScorer`), and the callback gets the figures at once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorahive.config import DEFAULT_TARGETS, ConfigError, LevelSpec, StackSpec
from lorahive.config.implant import ImplantConfig
from lorahive.implant.edits import Edit, EditScorer, Scores, spaced, token_scores
from lorahive.implant.probe import ProbeResult, probe_implant
from lorahive.implant.protect import NullSpaceWriter
from lorahive.implant.resume import load_state, restore, save_state, writer_parts
from lorahive.runtime.hive import Hive

__all__ = ["AGENT", "MethodResult", "PlainWriter", "Writer", "build_hive", "consolidate", "make_contexts", "resolve_writer", "run_implant", "run_method"]

#: The one agent every method edits.
AGENT = "editor"
#: Writes one edit into ``level`` of ``agent``'s view: ``writer(hive, agent, level, edit)``.
Writer = Callable[[Hive, str, str, Edit], None]
Loader = Callable[[], tuple[PreTrainedModel, PreTrainedTokenizerBase]]
OnScore = Callable[[str, Scores], None]
OnEdit = Callable[[str, int, int], None]

#: Starts of the generated contexts; the base model continues each greedily (ROME's random-prefix contexts, deterministic).
CONTEXT_STARTS = ("The", "Therefore,", "Because", "I", "You", "It", "Today", "In")


def make_contexts(hive: Hive, agent: str, n: int, tokens: int = 8) -> list[str]:
    """``n`` short texts the base model writes itself, used as prefixes before an edit's prompt."""
    if n == 0:
        return []
    starts = [CONTEXT_STARTS[i % len(CONTEXT_STARTS)] for i in range(n)]
    more = hive.generate(starts, [agent] * n, max_new_tokens=tokens, levels=[])
    return [" ".join(f"{s}{m}".split()).rstrip(".") + "." for s, m in zip(starts, more, strict=True)]


@dataclass
class PlainWriter:
    """Fine-tune one edit into a level, guarded: contexts, replay, neighbours, a KL anchor, early stopping.

    The rows of each step:

    * ``prompt → target_new`` after the bare prompt and after each generated context prefix
      (so the fact does not hang on the prompt's first tokens);
    * ``replay`` earlier edits' ``prompt → target_new`` (drawn with the seed from the edits
      this writer wrote before), so later edits do not overwrite them;
    * ``neighbours`` prompts of the same relation about other subjects of the run (the
      prompt with its subject swapped), each with the base model's greedy continuation
      (``neighbour_answers="base"``) or the hive's as it is now (``"hive"``: what earlier
      edits made of it), so the edit keys on its subject and not on the relation's wording.

    ``anchor`` × the KL to the base model on the rows' prompt text is added; every
    ``check_every`` steps it stops once the edit's own rows prefer the new object over the
    old one by ``margin`` (mean log-probability per token, or whole-sequence with
    ``length_normalised`` off). No row is a scored prompt (paraphrase or neighbourhood).
    """

    steps: int
    check_every: int
    margin: float
    anchor: float
    contexts: list[str] = field(default_factory=list)
    length_normalised: bool = True
    replay: int = 0
    neighbours: int = 0
    subjects: list[str] = field(default_factory=list)
    seed: int = 0
    neighbour_answers: str = "base"
    steps_taken: list[int] = field(default_factory=list)
    written: list[Edit] = field(default_factory=list)

    def __call__(self, hive: Hive, agent: str, level: str, edit: Edit) -> None:
        prompts = [edit.prompt] + [f"{c} {edit.prompt}" for c in self.contexts]
        rows = [(p, spaced(edit.target_new)) for p in prompts] + self.replayed(edit) + self.neighbour_rows(hive, agent, edit)
        done = 0
        while done < self.steps:
            n = min(self.check_every, self.steps - done)
            hive.learn_async({agent: rows}, steps=n, levels=[level], anchor=self.anchor)  # the losses are not read: no wait for the device
            done += n
            if done < self.steps and self.margin_met(hive, agent, prompts, edit):  # after the last steps the check would decide nothing
                break
        self.steps_taken.append(done)
        self.written.append(edit)

    def replayed(self, edit: Edit) -> list[tuple[str, str]]:
        """Up to ``replay`` earlier edits, drawn with the seed and the edit's place in the run."""
        rng = random.Random(f"{self.seed}/replay/{len(self.written)}")
        picked = rng.sample(self.written, min(self.replay, len(self.written)))
        return [(e.prompt, spaced(e.target_new)) for e in picked]

    def neighbour_rows(self, hive: Hive, agent: str, edit: Edit) -> list[tuple[str, str]]:
        """The edit's prompt about up to ``neighbours`` other subjects, with the base's (or the hive's) greedy continuation."""
        others = sorted({s for s in self.subjects if s != edit.subject and s not in edit.prompt})
        if self.neighbours == 0 or edit.subject not in edit.prompt or not others:
            return []
        rng = random.Random(f"{self.seed}/neighbours/{edit.case_id}")
        prompts = [edit.prompt.replace(edit.subject, s, 1) for s in rng.sample(others, min(self.neighbours, len(others)))]
        width = len(hive.tokenizer(spaced(edit.target_new), add_special_tokens=False)["input_ids"])
        answers = hive.generate(prompts, [agent] * len(prompts), max_new_tokens=max(1, width), levels=[] if self.neighbour_answers == "base" else None)
        return [(p, a) for p, a in zip(prompts, answers, strict=True) if a.strip()]

    def margin_met(self, hive: Hive, agent: str, prompts: list[str], edit: Edit) -> bool:
        ts = token_scores(hive, agent, [(p, spaced(a)) for p in prompts for a in (edit.target_new, edit.ground_truth)])
        p = (ts.mean_logp if self.length_normalised else ts.logp).view(-1, 2)
        return bool(((p[:, 0] - p[:, 1]) > self.margin).all())


def fixed_steps(steps: int) -> Writer:
    """The lora baseline's writer: ``steps`` plain steps on ``prompt → target_new``."""

    def write(hive: Hive, agent: str, level: str, edit: Edit) -> None:
        hive.learn({agent: [(edit.prompt, spaced(edit.target_new))]}, steps=steps, levels=[level])

    return write


def resolve_writer(cfg: ImplantConfig, contexts: list[str], subjects: list[str] | None = None) -> Writer:
    """The hive's writer by name; ``curriculum`` is part A's (:mod:`lorahive.implant.curriculum`), imported only here."""
    if cfg.writer == "plain":
        return PlainWriter(cfg.steps, cfg.check_every, cfg.margin, cfg.anchor, contexts, cfg.length_normalised, cfg.replay, cfg.neighbours, subjects or [], cfg.seed, cfg.neighbour_answers)
    try:
        from lorahive.implant.curriculum import curriculum_writer
    except ImportError as e:
        raise ConfigError(f"writer: 'curriculum' needs lorahive.implant.curriculum, which cannot be imported ({e}); use writer=plain") from None

    def write(hive: Hive, agent: str, level: str, edit: Edit) -> None:
        curriculum_writer(hive, agent, level, edit.prompt, spaced(edit.target_new), contexts, cfg.budget, cfg.seed, variants=cfg.variants, keep=(edit.subject,))

    return write


def check_writer(cfg: ImplantConfig) -> None:
    """Fail early (before anything is written) if the configured writer cannot be had."""
    if cfg.writer == "curriculum" and "hive" in cfg.methods:
        resolve_writer(cfg, [])


def hive_stack(cfg: ImplantConfig, hidden: int) -> StackSpec:
    """The hive method's two band-limited levels: slow memory (slowest first), the per-edit slot."""
    blocks = cfg.blocks()
    memory = LevelSpec(name="memory", rank=cfg.memory_rank or hidden, alpha=float(cfg.memory_rank or hidden), scope="agent", inertia=0.0, lr=cfg.lr, trainable=False, targets=cfg.targets, blocks=blocks)
    edit = LevelSpec(name="edit", rank=cfg.rank, alpha=cfg.alpha, scope="task", inertia=0.0, lr=cfg.lr, targets=cfg.targets, blocks=blocks)
    return StackSpec(levels=(memory, edit))


def lora_stack(cfg: ImplantConfig) -> StackSpec:
    """The baseline's one ordinary level: every block, every projection."""
    return StackSpec(levels=(LevelSpec(name="lora", rank=cfg.lora_rank, alpha=cfg.alpha, scope="agent", inertia=0.0, lr=cfg.lora_lr or cfg.lr, targets=DEFAULT_TARGETS),))


def build_hive(cfg: ImplantConfig, method: str, load: Loader) -> Hive:
    """A fresh hive for ``method`` over a freshly loaded base, with the one agent; the band is checked against the model."""
    model, tok = load()
    layers = int(model.config.num_hidden_layers)
    if cfg.band[1] >= layers:
        raise ConfigError(f"band: blocks {list(cfg.band)} do not fit a model of {layers} decoder blocks (0–{layers - 1})")
    stack = lora_stack(cfg) if method == "lora" else hive_stack(cfg, int(model.config.hidden_size))
    hive = Hive(model, tok, stack, seed=cfg.seed)
    hive.add_agent(AGENT)
    return hive


@torch.no_grad()
def consolidate(hive: Hive, fast: str, slow: str, agent: str) -> float:
    """Move ``agent``'s slot of ``fast`` into its slot of ``slow`` (add_delta), then reset the fast slot; the truncation error."""
    core = hive.core
    src, dst = core.slot_of(fast, agent), core.slot_of(slow, agent)
    scale = core.stack.get(fast).scale
    delta = {path: (bank.B[src] * scale, bank.A[src]) for path, bank in core.named_banks(fast)}  # (out, r), (r, in)
    err = core.add_delta(slow, dst, delta)
    core.reset(fast, [src])
    return err


def level_parameters(hive: Hive) -> int:
    """Parameters held by every level's banks (factors and init snapshots): what must not grow per edit."""
    return sum(2 * b.A.numel() + b.B.numel() for lv in hive.levels for b in hive.core.banks(lv.name))  # A0 counted as A's size, not regenerated


@dataclass
class MethodResult:
    """One method's checkpoints, cost and probe."""

    method: str
    checkpoints: list[Scores]
    seconds_per_edit: float = 0.0
    parameters: list[int] = field(default_factory=list)  # level parameters after each checkpoint
    truncation: float = 0.0  # largest consolidation truncation error seen
    steps_per_edit: float | None = None
    key_energy_kept: float | None = None  # nullspace: mean share of an edit's subject key energy outside the preserved basis
    probe_before: ProbeResult | None = None
    probe_after: ProbeResult | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "checkpoints": [s.model_dump() for s in self.checkpoints], "seconds_per_edit": self.seconds_per_edit}
        out |= {"parameters": self.parameters, "truncation": self.truncation, "steps_per_edit": self.steps_per_edit, "key_energy_kept": self.key_energy_kept}
        out |= {"probe_before": self.probe_before.model_dump() if self.probe_before else None, "probe_after": self.probe_after.model_dump() if self.probe_after else None}
        return out


def run_method(
    method: str, cfg: ImplantConfig, edits: list[Edit], load: Loader, on_edit: OnEdit | None = None, on_score: OnScore | None = None, out: Path | None = None, resume: bool = False
) -> MethodResult:
    """Apply ``edits`` in order with ``method`` and score all edits so far at each of ``cfg.score_points()``.

    With ``out``, the method's state is saved there every ``cfg.save_every`` edits
    (:mod:`lorahive.implant.resume`); with ``resume`` too, a saved state is continued from.
    """
    hive = build_hive(cfg, method, load)
    scorer = EditScorer(hive, AGENT, edits, cfg.length_normalised)
    points = cfg.score_points()
    result = MethodResult(method, [])
    if method == "unedited":
        outcomes = scorer.outcomes(hive, AGENT, len(edits), levels=[])
        for k in points:
            result.checkpoints.append(Scores(n=k, **{n: float(v[:k].mean()) for n, v in outcomes.items()}))
            if on_score:
                on_score(method, result.checkpoints[-1])
        return result
    level = "lora" if method == "lora" else "edit"
    writer = fixed_steps(cfg.steps) if method == "lora" else resolve_writer(cfg, make_contexts(hive, AGENT, cfg.contexts), [e.subject for e in edits])
    if method == "hive" and cfg.protect == "nullspace":
        writer = NullSpaceWriter(writer, cfg.null_energy, cfg.protect_tokens, cfg.protect_edits)
    layer = cfg.probe_layer if cfg.probe_layer is not None else cfg.band[1] + 1
    result.probe_before = probe_implant(hive, AGENT, edits, layer, cfg.seed)
    spent, done = 0.0, 0
    saved = load_state(out, method, cfg) if out is not None and resume else None
    if saved is not None:
        restore(saved, hive, writer, edits)
        spent, done = saved.seconds, saved.done
        result.checkpoints, result.parameters, result.truncation = saved.checkpoints, saved.parameters, saved.truncation
    for i, edit in enumerate(edits, start=1):
        if i <= done:
            continue
        start = time.perf_counter()
        writer(hive, AGENT, level, edit)
        if method == "hive" and (i % cfg.consolidate_every == 0 or i == len(edits)):
            result.truncation = max(result.truncation, consolidate(hive, "edit", "memory", AGENT))
        spent += time.perf_counter() - start
        if on_edit:
            on_edit(method, i, len(edits))
        if i in points:
            result.checkpoints.append(scorer.score(hive, AGENT, i))
            result.parameters.append(level_parameters(hive))
            if on_score:
                on_score(method, result.checkpoints[-1])
        if out is not None and cfg.save_every and i % cfg.save_every == 0 and i < len(edits):
            save_state(out, method, cfg, hive, i, spent, result, writer)
    result.seconds_per_edit = spent / len(edits)
    plain, guard = writer_parts(writer)
    if isinstance(plain, PlainWriter) and plain.steps_taken:
        result.steps_per_edit = sum(plain.steps_taken) / len(plain.steps_taken)
    if guard is not None and guard.kept:
        result.key_energy_kept = sum(guard.kept) / len(guard.kept)
    result.probe_after = probe_implant(hive, AGENT, edits, layer, cfg.seed)
    return result


def run_implant(
    cfg: ImplantConfig, edits: list[Edit], load: Loader, on_edit: OnEdit | None = None, on_score: OnScore | None = None, out: Path | None = None, resume: bool = False
) -> dict[str, MethodResult]:
    """Every configured method on the same edits, in a fixed order (unedited, hive, lora); states saved under ``out``, continued with ``resume``."""
    check_writer(cfg)
    order = [m for m in ("unedited", "hive", "lora") if m in cfg.methods]
    return {m: run_method(m, cfg, edits, load, on_edit, on_score, out, resume) for m in order}
