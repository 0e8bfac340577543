"""The Hive: the public facade over the model core — batched learning, proposals, logits, generation.

The model core (:class:`~lorahive.core.HiveCore`: injection, agents, slots, routing, level
state, write primitives) lives in :attr:`Hive.core`; this class adds what a user and the
runtime call (DESIGN.md §1–§2): learning many agents in one batched pass, exact per-agent
proposals for a shared level, mixed-agent logits, label scoring and generation.

Nothing here reads a GPU value back to the host except the numbers a caller asks for
(losses, scores), each gathered once per call; the ``*_async`` variants return them as
device tensors for a caller that gathers a whole phase at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorahive.adapters import ActivityProbe, Routing, add_totals, mean_activity
from lorahive.base import load_base
from lorahive.config import DEFAULT_BASE, LevelSpec, MemorySpec, StackSpec
from lorahive.core import HiveCore, pin
from lorahive.learning import answer_nll, last_logits, pack_examples, pack_prompts
from lorahive.learning.batching import Batch
from lorahive.learning.choice import option_pass, prompt_pass
from lorahive.learning.objective import anchor_logp, anchored_nll, hidden_states
from lorahive.runtime.passes import BaseMemo, Examples, Pass, check_examples, split


def read_losses(losses: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Device losses (as :meth:`Hive.learn_async` returns them) as floats, in one read-back."""
    if not losses:
        return {}
    return dict(zip(losses, torch.stack([v.detach() for v in losses.values()]).tolist(), strict=True))


#: Most prompt × option pairs :meth:`Hive.option_nll` scores in one pass by default.
OPTION_ROWS = 512


class Hive:
    """A frozen base model with a stack of routed LoRA levels shared by many agents."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, levels: StackSpec | list | None = None, seed: int = 0, max_length: int | None = None, memory: MemorySpec | None = None
    ) -> None:
        """``memory``: where init snapshots and optimizer moments are kept (:class:`~lorahive.config.MemorySpec`; default: all resident)."""
        self.core = HiveCore(model, tokenizer, levels, seed=seed, max_length=max_length, memory=memory)
        self._watch: tuple[list[str], int] | None = None  # armed activity measurement: levels, input rows kept
        self._watched: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._anchor_memo = BaseMemo()  # the base log-probs at the anchor positions, per row text
        self._watched_inputs: dict[str, torch.Tensor] = {}

    @classmethod
    def load(
        cls, base: str = DEFAULT_BASE, levels: StackSpec | list | None = None, device: str | torch.device | None = None, dtype: torch.dtype | None = None, seed: int = 0, memory: MemorySpec | None = None
    ) -> Hive:
        """Load a base model (``embedded:smollm2-135m`` or a local HF directory) and wrap it (``memory``: as the constructor's)."""
        loaded = load_base(base, device=device, dtype=dtype)
        return cls(loaded.model, loaded.tokenizer, levels, seed=seed, memory=memory)

    # ------------------------------------------------------------------ what a user reads
    @property
    def model(self) -> PreTrainedModel:
        return self.core.model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.core.tokenizer

    @property
    def stack(self) -> StackSpec:
        return self.core.stack

    @property
    def levels(self) -> list[LevelSpec]:
        return self.core.levels

    @property
    def agents(self) -> list[str]:
        return self.core.agents

    @property
    def device(self) -> torch.device:
        return self.core.device

    def add_agent(self, name: str) -> int:
        """Register an agent; its per-agent and per-task slots are allocated. Returns its index."""
        return self.core.add_agents([name])[0]

    def add_agents(self, names: Sequence[str]) -> list[int]:
        return self.core.add_agents(names)

    def reset_slots(self, level: str, agents: Sequence[str]) -> None:
        """Put ``agents``' slots of ``level`` back to their init snapshot (e.g. a new task's context)."""
        self.core.reset(level, sorted(set(self.core.slots_of(level, agents))))

    # ------------------------------------------------------------------ inference
    def _check_rows(self, prompts: Sequence[str], agents: Sequence[str]) -> None:
        if isinstance(prompts, str) or isinstance(agents, str):
            raise ValueError("prompts and agents must be lists of strings, one agent per prompt")
        if not prompts:
            raise ValueError("prompts is empty")
        if len(prompts) != len(agents):
            raise ValueError(f"got {len(prompts)} prompts but {len(agents)} agents; give one agent per prompt")

    @torch.no_grad()
    def logits(self, prompts: Sequence[str], agents: Sequence[str], levels: Sequence[str] | None = None) -> torch.Tensor:
        """Logits (B, V) at the last prompt position, row i routed to ``agents[i]``.

        ``levels`` names the levels to keep active (default all): the ablation switch.
        """
        self._check_rows(prompts, agents)
        routing = self.core.route(agents, levels)
        batch = pack_prompts(self.tokenizer, list(prompts), self.core.max_length).to(self.device)
        with self.core.routing.use(routing):
            return last_logits(self.model, batch)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], agents: Sequence[str], max_new_tokens: int = 16, levels: Sequence[str] | None = None, **kwargs) -> list[str]:
        """Greedy generation for a batch mixing agents, in one ``generate`` call."""
        self._check_rows(prompts, agents)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
        routing = self.core.route(agents, levels)
        batch = pack_prompts(self.tokenizer, list(prompts), self.core.max_length - max_new_tokens).to(self.device)
        kwargs.setdefault("do_sample", False)
        with self.core.routing.use(routing):
            out = self.model.generate(  # type: ignore[operator]
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                **kwargs,
            )
        new = out[:, batch.input_ids.shape[1] :]
        return [str(self.tokenizer.decode(row, skip_special_tokens=True)) for row in new]

    # ------------------------------------------------------------------ learning
    def _pack(self, examples: Examples, anchor_positions: int = 0) -> tuple[Batch, list[str], list[str]]:
        check_examples(examples)
        self.core.agent_index(list(examples))
        rows: list[tuple[str, str]] = []
        owners: list[str] = []
        for agent, exs in examples.items():
            if not exs:
                raise ValueError(f"agent {agent!r}: the example list is empty")
            for ex in exs:
                if not (isinstance(ex, tuple | list) and len(ex) == 2 and all(isinstance(s, str) for s in ex)):
                    raise ValueError(f"agent {agent!r}: each example must be a (prompt, answer) pair of strings, got {ex!r}")
                rows.append((ex[0], ex[1]))
                owners.append(agent)
        batch = pack_examples(self.tokenizer, rows, self.core.max_length, anchor_positions).to(self.device)
        return batch, owners, list(examples)

    def _agent_losses(self, batch: Batch, owners: list[str], names: list[str], routing: Routing) -> dict[str, torch.Tensor]:
        return self._objective(batch, owners, names, routing)[0]

    def _objective(
        self, batch: Batch, owners: list[str], names: list[str], routing: Routing, base: torch.Tensor | None = None, anchor: float = 0.0
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Each agent's mean answer NLL, and the sum over agents of NLL + ``anchor`` × mean anchor KL (what is minimised)."""
        with self.core.routing.use(routing):
            total, count, kl = anchored_nll(self.model, batch, base)
        row_agent = self.core.index([names.index(o) for o in owners])  # (B,)
        zeros = torch.zeros(len(names), device=total.device)
        means = zeros.index_add(0, row_agent, total) / zeros.index_add(0, row_agent, count)
        objective = means.sum()
        if base is not None and anchor > 0:
            rows = zeros.index_add(0, row_agent, torch.ones_like(kl))
            objective = objective + anchor * (zeros.index_add(0, row_agent, kl) / rows.clamp_min(1.0)).sum()
        return {n: means[i] for i, n in enumerate(names)}, objective

    def _passes(self, examples: Examples, anchor: float, positions: int, rows_per_pass: int | None) -> tuple[list[Pass], list[str]]:
        """The examples packed in passes of whole agents, at most ``rows_per_pass`` rows each (``None``: one pass), and every agent's name.

        An agent with more rows than that is a pass of its own. Each agent's loss and gradient
        come from its own rows only, so passes whose gradients are added up learn exactly what
        one pass over every row learns, with the activations of one pass held at a time.
        """
        names = list(check_examples(examples))
        passes: list[Pass] = []
        for i, part in enumerate(split(examples, rows_per_pass)):
            batch, owners, part_names = self._pack(part, positions if anchor > 0 else 0)
            keys = [(a, prompt, ans) for a, exs in part.items() for prompt, ans in exs]
            passes.append(Pass(batch, owners, part_names, self._anchor_base(batch, owners, anchor, part, positions, first=i == 0), keys))
        return passes, names

    def _anchor_base(self, batch: Batch, owners: list[str], anchor: float, examples: Examples, positions: int, first: bool = True) -> torch.Tensor | None:
        """The foundation's log-probabilities at the anchor positions (every level off), or ``None`` without an anchor.

        Kept per row (:class:`~lorahive.runtime.passes.BaseMemo`): the fast steps of a tick, and
        its proposals (all agents' rows, or those of the agents that cleared the bar), pack rows
        already seen and pay for one pass, not one each.
        """
        if anchor <= 0 or batch.anchor_at is None:
            return None

        def compute() -> torch.Tensor:
            with self.core.routing.use(self.core.route(owners, levels=[])):
                return anchor_logp(self.model, batch)

        return self._anchor_memo.get([(p, a) for exs in examples.values() for p, a in exs], positions, batch, compute, first)

    def watch_activity(self, levels: Sequence[str], inputs: int = 0) -> None:
        """Measure the pattern activity of ``levels`` during the next learning forward (no extra pass).

        The next :meth:`learn_async` step's forward reports to an
        :class:`~lorahive.adapters.ActivityProbe`; :meth:`watched_activity` returns what it saw
        (as sums and row counts), :meth:`watched_inputs` the mean input of its first ``inputs``
        rows at every wrapped module.
        """
        self._watch, self._watched, self._watched_inputs = (list(self.core.check_levels(levels) or ()), inputs), None, {}

    def watched_activity(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
        """What the armed measurement saw, as :meth:`ActivityProbe.totals` (``None`` if no learning forward ran since it was armed); disarms it."""
        out, self._watch, self._watched = self._watched, None, None
        return out

    def watched_inputs(self) -> dict[str, torch.Tensor]:
        """Module path -> ``(rows, in)`` mean inputs the last armed measurement kept (empty if none); clears them."""
        out, self._watched_inputs = self._watched_inputs, {}
        return out

    @torch.no_grad()
    def activity(self, examples: Examples, levels: Sequence[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per level of ``levels``: each slot's pattern activity ``(S, r)`` on these examples, and which slots had rows ``(S,)``.

        One forward pass of the decoder (no LM head) over the examples, every level running,
        with an :class:`~lorahive.adapters.ActivityProbe` listening (its docstring defines
        activity). Levels that did not run (exactly zero and skipped) are absent.
        """
        return mean_activity(self.activity_totals(examples, levels))

    @torch.no_grad()
    def activity_totals(self, examples: Examples, levels: Sequence[str], rows_per_pass: int | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`activity` as per-slot sums and row counts (:meth:`ActivityProbe.totals`), which processes add up; in passes as :meth:`learn_async`."""
        watched = sorted(self.core.check_levels(levels) or ())
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for p in self._passes(examples, 0.0, 0, rows_per_pass)[0]:
            probe = ActivityProbe(watched, p.batch.attention_mask)
            with self.core.routing.use(self.core.route(p.owners)), self.core.routing.probing(probe):
                hidden_states(self.model, p.batch)
            out = add_totals(out, probe.totals())
        return out

    @torch.no_grad()
    def loss(self, examples: Examples, levels: Sequence[str] | None = None, rows_per_pass: int | None = None) -> dict[str, float]:
        """Mean answer-token NLL per agent, without learning (in passes of at most ``rows_per_pass`` rows, as :meth:`learn_async`)."""
        active = self.core.check_levels(levels)
        losses: dict[str, torch.Tensor] = {}
        for p in self._passes(examples, 0.0, 0, rows_per_pass)[0]:
            losses.update(self._agent_losses(p.batch, p.owners, p.names, self.core.route(p.owners, active)))
        return read_losses(losses)

    @torch.no_grad()
    def row_nll(self, rows: Sequence[tuple[str, str, str]], levels: Sequence[str] | None = None, chunk: int = 64) -> torch.Tensor:
        """Summed answer NLL of each ``(agent, prompt, answer)`` row, in chunks, as a (N,) CPU tensor."""
        out = []
        for i in range(0, len(rows), chunk):
            part = rows[i : i + chunk]
            batch = pack_examples(self.tokenizer, [(p, a) for _, p, a in part], self.core.max_length).to(self.device)
            with self.core.routing.use(self.core.route([r[0] for r in part], self.core.check_levels(levels))):
                total, _ = answer_nll(self.model, batch)
            out.append(total)
        return torch.cat(out).cpu() if out else torch.zeros(0)

    @torch.no_grad()
    def option_nll(self, rows: Sequence[tuple[str, str]], options: Sequence[str], levels: Sequence[str] | None = None, chunk: int | None = None) -> torch.Tensor:
        """Summed NLL (N, L) of each option after each ``(agent, prompt)`` row (label scoring), on the CPU.

        Each prompt runs once; the options' tokens continue from its KV cache, packed in one
        continuation of its row (learning/choice.py), under the prompts' routing. Prompts go
        ``chunk`` at a time (default 128 on a GPU, where a pass is host-bound and a bigger batch
        costs little more, 32 on the CPU), and at most :data:`OPTION_ROWS` prompt × option pairs
        at a time (the options' log-probabilities are prompts × option tokens × vocabulary
        floats); all chunks are read back together.
        """
        chunk = chunk or max(1, min(128 if self.device.type == "cuda" else 32, OPTION_ROWS // max(len(options), 1)))
        active = self.core.check_levels(levels)
        out = []
        for i in range(0, len(rows), chunk):
            part = rows[i : i + chunk]
            batch = pack_prompts(self.tokenizer, [p for _, p in part], self.core.max_length).to(self.device)
            with self.core.routing.use(self.core.route([a for a, _ in part], active)):
                first, cache = prompt_pass(self.model, batch)
                out.append(option_pass(self.model, self.tokenizer, batch, first, cache, list(options)))
        return torch.cat(out).cpu() if out else torch.zeros(0, len(options))

    def learn(self, examples: Examples, steps: int = 1, levels: Sequence[str] | None = None, anchor: float = 0.0, anchor_positions: int = 16) -> dict[str, float]:
        """Learn from many agents' (prompt, answer) examples in one batched pass per step.

        Each agent's loss is its mean answer-token NLL; per-agent and per-task slots get the
        gradient of their own agent's loss, shared levels the mean over agents. ``levels``
        restricts which trainable levels move (default: every trainable level). Returns each
        agent's loss at the last step, measured before that step's update. A step whose loss
        is not finite is skipped (nothing moves) and reported as NaN. ``anchor``: see :meth:`learn_async`.
        """
        return read_losses(self.learn_async(examples, steps, levels, anchor, anchor_positions))

    def learn_async(
        self, examples: Examples, steps: int = 1, levels: Sequence[str] | None = None, anchor: float = 0.0, anchor_positions: int = 16, rows_per_pass: int | None = None
    ) -> dict[str, torch.Tensor]:
        """:meth:`learn` without reading anything back: each agent's last loss as a device scalar.

        A non-finite step is skipped on the device (the optimizer's ``found_inf``: weights and
        moments stay as they were); its agents' losses come back NaN. ``anchor`` > 0 adds the
        foundation anchor to what is minimised: ``anchor`` × the mean ``KL(base ‖ hive)`` of the
        next-token distribution at up to ``anchor_positions`` prompt positions per row, the
        base model's own predictions on the prompts' text (one extra forward with every level
        off); the returned losses stay the answer NLL. ``rows_per_pass``: each step's forward
        and backward run over passes of whole agents with at most that many rows, their
        gradients added up before the step (the same step; activations of one pass at a time).
        """
        if steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {steps}")
        passes, names = self._passes(examples, anchor, anchor_positions, rows_per_pass)
        update = self._updated(levels)
        routings = [pin(self.core, self.core.route(p.owners, training=[lv.name for lv in update]), p.keys) for p in passes]
        losses: dict[str, torch.Tensor] = {}
        bad = torch.zeros(1, device=self.device)
        for _ in range(steps):
            losses, bad = self._learn_step(passes, names, routings, anchor, update)
        return self._step_losses(losses, bad)

    def learn_and_propose(
        self, examples: Examples, level: str = "swarm", levels: Sequence[str] | None = None, anchor: float = 0.0, anchor_positions: int = 16, rows_per_pass: int | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
        """One :meth:`learn_async` step whose own backward also yields :meth:`propose`'s proposals for ``level``.

        The step's objective and rows are those :meth:`propose` differentiates, on the weights
        the step starts from, so each agent's gradient on shared ``level`` comes out of the
        step's backward: ``level`` runs through per-agent proposal slots (copies of its weights,
        as in :meth:`propose`) and is not stepped. One forward and backward instead of two; the
        step's update is the one :meth:`learn_async` makes (``level`` adds the same to every row).
        ``level`` must not be among the levels the step trains. Returns each agent's loss (device
        scalars, NaN for a skipped step) and ``{agent: {param name: grad}}`` as :meth:`propose`.
        """
        self._check_shared(level)
        update = self._updated(levels)
        if level in {lv.name for lv in update}:
            raise ValueError(f"learn_and_propose: {level!r} is among the levels the step trains; its proposal would be taken on a level being stepped")
        passes, names = self._passes(examples, anchor, anchor_positions, rows_per_pass)
        slots = self._proposal_slots(level, len(names))
        routings = [pin(self.core, self._proposal_routing(level, p.owners, names, slots, [lv.name for lv in update]), p.keys) for p in passes]
        losses, bad = self._learn_step(passes, names, routings, anchor, update)
        grads = [t.grad if t.grad is not None else torch.zeros_like(t) for pair in slots.values() for t in pair]
        return self._step_losses(losses, bad), _by_agent(slots, grads, names)

    def _updated(self, levels: Sequence[str] | None) -> list[LevelSpec]:
        """The trainable levels a learning step moves: ``levels`` (checked), default every trainable level."""
        self.core.check_levels(levels)
        return [lv for lv in self.stack.levels if lv.trainable and (levels is None or lv.name in levels)]

    def _learn_step(self, passes: list[Pass], names: list[str], routings: list[Routing], anchor: float, update: list[LevelSpec]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One forward and backward per pass, gradients added up, and one step of ``update``'s levels; each agent's loss and the (1,) skip flag."""
        self.core.zero_grad()
        watch = self._watch if self._watched is None else None  # an armed measurement rides on this step's forwards
        losses: dict[str, torch.Tensor] = {}
        totals: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        bad = torch.zeros(1, device=self.device)
        for i, (p, routing) in enumerate(zip(passes, routings, strict=True)):
            if watch is not None:
                probe = ActivityProbe(watch[0], p.batch.attention_mask, keep_inputs=watch[1] if i == 0 else 0)
                with self.core.routing.probing(probe):
                    part, total = self._objective(p.batch, p.owners, p.names, routing, p.base, anchor)
                totals = add_totals(totals, probe.totals())
                if i == 0:
                    self._watched_inputs = probe.inputs
            else:
                part, total = self._objective(p.batch, p.owners, p.names, routing, p.base, anchor)
            bad = torch.maximum(bad, (~torch.isfinite(total)).float().reshape(1))  # (1,): 1 skips the step, on the device
            total.backward()
            losses.update(part)
        if watch is not None:
            self._watched = totals
        own_slots = sorted(set(self.core.agent_index(names)))
        for lv in update:
            params = self.core.level_params(lv.name)
            if lv.scope == "shared":
                for q in params.values():
                    if q.grad is not None:
                        q.grad.div_(len(names))
            self.core.step(lv.name, None, [0] if lv.scope == "shared" else own_slots, found_inf=bad)
        self.core.zero_grad()
        return losses, bad

    def _step_losses(self, losses: dict[str, torch.Tensor], bad: torch.Tensor) -> dict[str, torch.Tensor]:
        nan = torch.full((), float("nan"), device=self.device)
        return {n: torch.where(bad[0] > 0, nan, v.detach()) for n, v in losses.items()}

    # ------------------------------------------------------------------ shared-level proposals
    def propose(
        self,
        examples: Examples,
        level: str = "swarm",
        anchor: float = 0.0,
        anchor_positions: int = 16,
        rows_per_pass: int | None = None,
        levels: Sequence[str] | None = None,
    ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, float]]:
        """Each agent's exact gradient on shared ``level``, from one batched backward (one per pass with ``rows_per_pass``).

        The level gets one *proposal slot* per agent, all holding the level's current weights;
        row i is routed to its agent's slot, so the gradient that lands in slot k is agent k's
        own gradient (DESIGN.md §2). Returns ``{agent: {param name: grad}}`` with slot-shaped
        tensors keyed like :meth:`level_params`, and each agent's loss. ``anchor`` adds the
        foundation anchor to each agent's objective, as in :meth:`learn_async`. ``levels``: the
        levels the view runs (default every level); ``level`` must be among them.
        """
        self._check_shared(level)
        view = self.core.check_levels(levels)
        if view is not None and level not in view:
            raise ValueError(f"propose: {level!r} must be among the levels of the view, got {sorted(view)}")
        passes, names = self._passes(examples, anchor, anchor_positions, rows_per_pass)
        slots = self._proposal_slots(level, len(names))
        leaves = [t for pair in slots.values() for t in pair]
        grads: list[torch.Tensor] = []
        losses: dict[str, torch.Tensor] = {}
        for p in passes:
            routing = pin(self.core, self._proposal_routing(level, p.owners, names, slots, active=levels), p.keys)
            part, objective = self._objective(p.batch, p.owners, p.names, routing, p.base, anchor)
            g = torch.autograd.grad(objective, leaves)  # an agent's slot gets gradient from its own pass only
            grads = list(g) if not grads else [a.add_(b) for a, b in zip(grads, g, strict=True)]
            losses.update(part)
        return _by_agent(slots, grads, names), read_losses(losses)

    def _check_shared(self, level: str) -> None:
        if self.stack.get(level).scope != "shared":
            raise ValueError(f"proposals are for shared levels; {level!r} is scoped {self.stack.get(level).scope!r}")

    def _proposal_slots(self, level: str, k: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per module of shared ``level``: ``k`` proposal slots ``(A, B)``, leaves each holding the level's current weights."""
        slots: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for path, bank in self.core.named_banks(level):
            pa = bank.A.detach()[:1].expand(k, -1, -1).clone().requires_grad_()  # (K, r, in)
            pb = bank.B.detach()[:1].expand(k, -1, -1).clone().requires_grad_()  # (K, out, r)
            slots[path] = (pa, pb)
        return slots

    def _proposal_routing(
        self, level: str, owners: list[str], names: list[str], slots: dict[str, tuple[torch.Tensor, torch.Tensor]], training: Sequence[str] = (), active: Sequence[str] | None = None
    ) -> Routing:
        """The rows' routing with shared ``level`` on the proposal ``slots``: a row uses its agent's (its place in ``names``), so the gradient that lands in slot k is agent k's own; ``active``: the levels that run (default all)."""
        base = self.core.route(owners, levels=active, training=[*training, level])
        rows = tuple(names.index(o) for o in owners)
        return Routing(
            slots={**base.slots, level: self.core.index(rows)}, active=base.active, mix=base.mix, overrides={level: slots},
            uniform=base.uniform, host_slots={**base.host_slots, level: rows},
        )

    def apply_update(self, level: str, update: Mapping[str, torch.Tensor]) -> None:
        """Step shared ``level``'s optimizer with ``update`` as its gradient (the level's current step size)."""
        params = self.core.level_params(level)
        if set(update) != set(params):
            raise ValueError(f"update for {level!r} must cover exactly its {len(params)} parameters")
        self.core.step(level, {name: update[name].unsqueeze(0) for name in params}, [0])


def _by_agent(slots: Mapping[str, tuple[torch.Tensor, torch.Tensor]], grads: Sequence[torch.Tensor], names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Proposal-slot gradients (``A, B`` per module, in ``slots`` order) as ``{agent: {param name: grad}}``."""
    out: dict[str, dict[str, torch.Tensor]] = {n: {} for n in names}
    for path, g_a, g_b in zip(slots, grads[0::2], grads[1::2], strict=True):
        for i, n in enumerate(names):
            out[n][f"{path}.A"], out[n][f"{path}.B"] = g_a[i], g_b[i]
    return out
