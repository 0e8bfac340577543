"""The Hive: one frozen causal LM, a stack of LoRA levels, many agents, one batched pass.

This is the public facade of the core (DESIGN.md §1–§2): routing rows to agents' slots,
batched learning with per-level step sizes, mixed-agent logits and generation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import cast

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorahive.adapters import HiveLinear, LevelBank, Routing, RoutingState, inject
from lorahive.base import load_base
from lorahive.config import DEFAULT_BASE, LevelSpec, StackSpec, as_stack
from lorahive.learning import SlotAdamW, answer_nll, last_logits, pack_examples, pack_prompts
from lorahive.learning.batching import Batch
from lorahive.learning.choice import option_pass, prompt_pass

Examples = Mapping[str, Sequence[tuple[str, str]]]


class Hive:
    """A frozen base model with a stack of routed LoRA levels shared by many agents."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, levels: StackSpec | list | None = None, seed: int = 0, max_length: int | None = None) -> None:
        self.stack = as_stack(levels)
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            tokenizer.pad_token = tokenizer.eos_token
        self.seed = seed
        self.max_length: int = max_length or int(getattr(model.config, "max_position_embeddings", None) or 2048)
        self.routing = RoutingState()
        self.layers: dict[str, HiveLinear] = inject(model, self.stack, {lv.name: 1 for lv in self.stack.levels}, self.routing, seed)
        self.mix: dict[str, float] = {lv.name: lv.mix for lv in self.stack.levels}
        self.optimizers = {lv.name: SlotAdamW(lr=lv.step_size, weight_decay=lv.weight_decay) for lv in self.stack.levels}
        self._agents: list[str] = []
        self._set_trainable()

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, base: str = DEFAULT_BASE, levels: StackSpec | list | None = None, device: str | torch.device | None = None, dtype: torch.dtype | None = None, seed: int = 0) -> Hive:
        """Load a base model (``embedded:smollm2-135m`` or a local HF directory) and wrap it."""
        loaded = load_base(base, device=device, dtype=dtype)
        return cls(loaded.model, loaded.tokenizer, levels, seed=seed)

    @property
    def agents(self) -> list[str]:
        return list(self._agents)

    @property
    def levels(self) -> list[LevelSpec]:
        return list(self.stack.levels)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def add_agent(self, name: str) -> int:
        """Register an agent; its per-agent and per-task slots are allocated. Returns its index."""
        return self.add_agents([name])[0]

    def add_agents(self, names: Sequence[str]) -> list[int]:
        for n in names:
            if not isinstance(n, str) or not n:
                raise ValueError(f"agent name must be a non-empty string, got {n!r}")
        known = set(self._agents)
        dupes = sorted({n for n in names if n in known or list(names).count(n) > 1})
        if dupes:
            raise ValueError(f"agent names already taken: {', '.join(dupes)}")
        start = len(self._agents)
        need = start + len(names)
        for lv in self.stack.levels:
            if lv.scope != "shared":
                capacity = max(1, self.n_slots(lv.name))
                while capacity < need:
                    capacity *= 2
                for bank in self.banks(lv.name):
                    bank.grow(capacity)
        self._agents.extend(names)
        return list(range(start, need))

    # ------------------------------------------------------------------ banks
    def banks(self, level: str) -> Iterator[LevelBank]:
        """Every wrapped layer's bank of ``level``."""
        for _, bank in self.named_banks(level):
            yield bank

    def named_banks(self, level: str) -> Iterator[tuple[str, LevelBank]]:
        for path, layer in self.layers.items():
            if level in layer.banks:
                yield path, cast(LevelBank, layer.banks[level])

    def n_slots(self, level: str) -> int:
        return next(iter(self.banks(level))).n_slots

    def level_params(self, level: str) -> dict[str, nn.Parameter]:
        params: dict[str, nn.Parameter] = {}
        for path, bank in self.named_banks(level):
            params[f"{path}.A"] = bank.A
            params[f"{path}.B"] = bank.B
        return params

    def _set_trainable(self) -> None:
        for lv in self.stack.levels:
            for p in self.level_params(lv.name).values():
                p.requires_grad_(lv.trainable)

    def slot_of(self, level: str, agent: str) -> int:
        """The slot ``agent`` uses in ``level`` (0 for shared levels)."""
        idx = self._agent_index([agent])[0]
        return 0 if self.stack.get(level).scope == "shared" else idx

    def reset_slot(self, level: str, agent: str) -> None:
        """Put ``agent``'s slot of ``level`` back to its init snapshot (e.g. a new task's context)."""
        slot = torch.tensor([self.slot_of(level, agent)])
        for bank in self.banks(level):
            bank.reset(slot.to(bank.A.device))
        opt = self.optimizers[level]
        for st in opt.state.values():
            for k in ("exp_avg", "exp_avg_sq", "step"):
                st[k][slot.to(st[k].device)] = 0

    # ------------------------------------------------------------------ routing
    def _agent_index(self, agents: Sequence[str]) -> list[int]:
        index = {n: i for i, n in enumerate(self._agents)}
        unknown = sorted({a for a in agents if a not in index})
        if unknown:
            raise ValueError(f"unknown agents: {', '.join(map(str, unknown))}; known agents: {self._agents or 'none (call add_agent first)'}")
        return [index[a] for a in agents]

    def _check_levels(self, levels: Sequence[str] | frozenset[str] | None) -> frozenset[str] | None:
        if levels is None:
            return None
        unknown = sorted(set(levels) - set(self.stack.names()))
        if unknown:
            raise ValueError(f"unknown levels: {', '.join(unknown)}; levels are {self.stack.names()}")
        return frozenset(levels)

    def zero_levels(self) -> set[str]:
        """Shared levels whose B is exactly zero in every module: they add exactly nothing."""
        return {lv.name for lv in self.stack.levels if lv.scope == "shared" and not any(bool(b.B.any()) for b in self.banks(lv.name))}

    def route(
        self,
        agents: Sequence[str],
        levels: Sequence[str] | frozenset[str] | None = None,
        gates: dict[str, torch.Tensor] | None = None,
        training: Sequence[str] = (),
    ) -> Routing:
        """The routing of a batch whose row i belongs to ``agents[i]``.

        Shared levels that are exactly zero and not being trained are skipped: the result
        is the same (they add +0.0) and a fresh hive's slow levels cost nothing.
        """
        idx = torch.tensor(self._agent_index(agents), device=self.device)
        slots = {lv.name: idx for lv in self.stack.levels if lv.scope != "shared"}
        active = self._check_levels(levels)
        skip = self.zero_levels() - set(training)
        if skip:
            active = frozenset((active if active is not None else set(self.stack.names())) - skip)
        return Routing(slots=slots, active=active, mix=dict(self.mix), gates=gates or {})

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
        routing = self.route(agents, levels)
        batch = pack_prompts(self.tokenizer, list(prompts), self.max_length).to(self.device)
        with self.routing.use(routing):
            return last_logits(self.model, batch)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], agents: Sequence[str], max_new_tokens: int = 16, levels: Sequence[str] | None = None, **kwargs) -> list[str]:
        """Greedy generation for a batch mixing agents, in one ``generate`` call."""
        self._check_rows(prompts, agents)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
        routing = self.route(agents, levels)
        batch = pack_prompts(self.tokenizer, list(prompts), self.max_length - max_new_tokens).to(self.device)
        kwargs.setdefault("do_sample", False)
        with self.routing.use(routing):
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
    def _pack(self, examples: Examples) -> tuple[Batch, list[str], list[str]]:
        if not isinstance(examples, Mapping) or not examples:
            raise ValueError("examples must be a non-empty mapping {agent: [(prompt, answer), ...]}")
        self._agent_index(list(examples))
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
        batch = pack_examples(self.tokenizer, rows, self.max_length).to(self.device)
        return batch, owners, list(examples)

    def _agent_losses(self, batch: Batch, owners: list[str], names: list[str], routing: Routing) -> dict[str, torch.Tensor]:
        with self.routing.use(routing):
            total, count = answer_nll(self.model, batch)
        row_agent = torch.tensor([names.index(o) for o in owners], device=total.device)
        sums = torch.zeros(len(names), device=total.device).index_add(0, row_agent, total)
        counts = torch.zeros(len(names), device=total.device).index_add(0, row_agent, count)
        means = sums / counts
        return {n: means[i] for i, n in enumerate(names)}

    @torch.no_grad()
    def loss(self, examples: Examples, levels: Sequence[str] | None = None) -> dict[str, float]:
        """Mean answer-token NLL per agent, without learning."""
        batch, owners, names = self._pack(examples)
        routing = self.route(owners, self._check_levels(levels))
        return {n: float(v) for n, v in self._agent_losses(batch, owners, names, routing).items()}

    @torch.no_grad()
    def row_nll(self, rows: Sequence[tuple[str, str, str]], levels: Sequence[str] | None = None, chunk: int = 64) -> torch.Tensor:
        """Summed answer NLL of each ``(agent, prompt, answer)`` row, in chunks, as a (N,) tensor."""
        out = []
        for i in range(0, len(rows), chunk):
            part = rows[i : i + chunk]
            batch = pack_examples(self.tokenizer, [(p, a) for _, p, a in part], self.max_length).to(self.device)
            with self.routing.use(self.route([r[0] for r in part], self._check_levels(levels))):
                total, _ = answer_nll(self.model, batch)
            out.append(total.cpu())
        return torch.cat(out) if out else torch.zeros(0)

    @torch.no_grad()
    def option_nll(self, rows: Sequence[tuple[str, str]], options: Sequence[str], levels: Sequence[str] | None = None, chunk: int = 32) -> torch.Tensor:
        """Summed NLL (N, L) of each option after each ``(agent, prompt)`` row (label scoring).

        Each prompt runs once; the options continue from its KV cache (learning/choice.py).
        """
        active = self._check_levels(levels)
        out = []
        for i in range(0, len(rows), chunk):
            part = rows[i : i + chunk]
            batch = pack_prompts(self.tokenizer, [p for _, p in part], self.max_length).to(self.device)
            with self.routing.use(self.route([a for a, _ in part], active)):
                first, cache = prompt_pass(self.model, batch)
            with self.routing.use(self.route([a for a, _ in part for _ in options], active)):
                out.append(option_pass(self.model, self.tokenizer, batch, first, cache, list(options)).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(options))

    def learn(self, examples: Examples, steps: int = 1, levels: Sequence[str] | None = None) -> dict[str, float]:
        """Learn from many agents' (prompt, answer) examples in one batched pass per step.

        Each agent's loss is its mean answer-token NLL; per-agent and per-task slots get the
        gradient of their own agent's loss, shared levels the mean over agents. ``levels``
        restricts which trainable levels move (default: every trainable level). Returns each
        agent's loss at the last step, measured before that step's update. A step whose loss
        is not finite is skipped (nothing moves) and reported as NaN.
        """
        if steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {steps}")
        batch, owners, names = self._pack(examples)
        update = [lv for lv in self.stack.levels if lv.trainable and (levels is None or lv.name in levels)]
        self._check_levels(levels)
        idx = torch.tensor(sorted(set(self._agent_index(names))), device=self.device)
        losses: dict[str, torch.Tensor] = {}
        for _ in range(steps):
            self.model.zero_grad(set_to_none=True)
            losses = self._agent_losses(batch, owners, names, self.route(owners, training=[lv.name for lv in update]))
            total = torch.stack(list(losses.values())).sum()
            if not torch.isfinite(total):
                continue
            total.backward()
            for lv in update:
                params = self.level_params(lv.name)
                if lv.scope == "shared":
                    for p in params.values():
                        if p.grad is not None:
                            p.grad.div_(len(names))
                    slots = torch.zeros(1, dtype=torch.long, device=self.device)
                else:
                    slots = idx
                self.optimizers[lv.name].step(params, slots)
        self.model.zero_grad(set_to_none=True)
        return {n: float(v.detach()) for n, v in losses.items()}

    # ------------------------------------------------------------------ shared-level proposals
    def propose(self, examples: Examples, level: str = "swarm") -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, float]]:
        """Each agent's exact gradient on shared ``level``, from one batched backward.

        The level gets one *proposal slot* per agent, all holding the level's current weights;
        row i is routed to its agent's slot, so the gradient that lands in slot k is agent k's
        own gradient (DESIGN.md §2). Returns ``{agent: {param name: grad}}`` with slot-shaped
        tensors keyed like :meth:`level_params`, and each agent's loss.
        """
        if self.stack.get(level).scope != "shared":
            raise ValueError(f"proposals are for shared levels; {level!r} is scoped {self.stack.get(level).scope!r}")
        batch, owners, names = self._pack(examples)
        k = len(names)
        slots: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for path, bank in self.named_banks(level):
            pa = bank.A.detach()[:1].expand(k, -1, -1).clone().requires_grad_()  # (K, r, in)
            pb = bank.B.detach()[:1].expand(k, -1, -1).clone().requires_grad_()  # (K, out, r)
            slots[path] = (pa, pb)
        base = self.route(owners, training=[level])
        row_slot = torch.tensor([names.index(o) for o in owners], device=self.device)
        routing = Routing(slots={**base.slots, level: row_slot}, active=base.active, mix=base.mix, overrides={level: slots})
        losses = self._agent_losses(batch, owners, names, routing)
        leaves = [t for pair in slots.values() for t in pair]
        grads = torch.autograd.grad(torch.stack(list(losses.values())).sum(), leaves)
        out: dict[str, dict[str, torch.Tensor]] = {n: {} for n in names}
        for (path, _), g_a, g_b in zip(slots.items(), grads[0::2], grads[1::2], strict=True):
            for i, n in enumerate(names):
                out[n][f"{path}.A"], out[n][f"{path}.B"] = g_a[i], g_b[i]
        return out, {n: float(v.detach()) for n, v in losses.items()}

    def apply_update(self, level: str, update: Mapping[str, torch.Tensor]) -> None:
        """Step shared ``level``'s optimizer with ``update`` as its gradient (η_l·(1−β_l) step)."""
        params = self.level_params(level)
        if set(update) != set(params):
            raise ValueError(f"update for {level!r} must cover exactly its {len(params)} parameters")
        for name, p in params.items():
            g = torch.zeros_like(p)
            g[0] = update[name].to(p.device, p.dtype)
            p.grad = g
        self.optimizers[level].step(params, torch.zeros(1, dtype=torch.long, device=self.device))
        for p in params.values():
            p.grad = None
