"""The model core: one frozen LM with routed LoRA levels, its agents, and the primitives that write levels.

Everything above it (the :class:`~lorahive.runtime.hive.Hive` facade, mechanisms, the
checkpoint store, observers, PEFT interop) reads and writes levels through this class only:

* injection and banks: :attr:`HiveCore.layers`, :meth:`banks`, :meth:`level_params`;
* the agent registry and the scope → slot rule: :meth:`add_agents`, :meth:`slot_of`;
* routing: :meth:`route` builds the per-row routing of a batch without reading the device;
* level state (:class:`~lorahive.core.state.LevelState`): mix, inertia, step size, thresholds;
* write primitives (DESIGN.md §7): :meth:`step`, :meth:`add_delta`, :meth:`decay_toward_init`,
  :meth:`reset`, :meth:`load_slots`, :meth:`scale`. Each records which slots may hold a non-zero ``B``, so "this shared level
  adds exactly nothing" is known on the host instead of read from every bank.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import cast

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorahive.adapters import HiveLinear, LevelBank, Routing, RoutingState, inject
from lorahive.config import LevelSpec, MemorySpec, StackSpec, as_stack
from lorahive.core.lowrank import balanced, refactor
from lorahive.core.pins import RowPins
from lorahive.core.state import LevelState
from lorahive.learning import SlotAdamW
from lorahive.tensors import to_device

__all__ = ["HiveCore", "persistent_levels"]

#: A ΔW-space change for one module: a dense (out, in) tensor, or factors U (out, k), V (k, in).
ModuleDelta = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
_INDEX_CACHE = 512


def persistent_levels(stack: StackSpec) -> list[str]:
    """Levels that outlive a task: everything but task-scoped levels (an agent's lasting view)."""
    return [lv.name for lv in stack.levels if lv.scope != "task"]


class HiveCore:
    """A frozen base model with a stack of routed LoRA levels, the agents' slots and level state."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, levels: StackSpec | list | None = None, seed: int = 0, max_length: int | None = None, memory: MemorySpec | None = None
    ) -> None:
        self.stack = as_stack(levels)
        self.memory = memory or MemorySpec()  # where init snapshots and optimizer moments are kept
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            tokenizer.pad_token = tokenizer.eos_token
        self.seed = seed
        self.max_length: int = max_length or int(getattr(model.config, "max_position_embeddings", None) or 2048)
        self.routing = RoutingState()
        self.layers: dict[str, HiveLinear] = inject(model, self.stack, {lv.name: 1 for lv in self.stack.levels}, self.routing, seed)
        self.states: dict[str, LevelState] = {lv.name: LevelState.from_spec(lv) for lv in self.stack.levels}
        self.optimizers = {lv.name: self._optimizer(lv) for lv in self.stack.levels}
        self.written: dict[str, set[int]] = {lv.name: set() for lv in self.stack.levels}  # slots whose B may be non-zero
        self.origin: dict[str, str] = {}  # level grown while running (mechanisms/topology.py) -> the configured level it descends from
        self._agents: list[str] = []
        self._index: dict[str, int] = {}
        self._device_index: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self.pins: RowPins | None = None  # rows the coming learning calls run on other factors (core/pins.py)
        for lv in self.stack.levels:
            for p in self.level_params(lv.name).values():
                p.requires_grad_(lv.trainable)
            for bank in self.banks(lv.name):
                bank.use_memory(self.memory.store_init, self.memory.slot_grads)

    def _optimizer(self, spec: LevelSpec) -> SlotAdamW:
        """A level's per-slot AdamW; its moments on the host when ``memory.host_moments`` and the level has a slot per agent or task."""
        return SlotAdamW(lr=spec.step_size, weight_decay=spec.weight_decay, host=self.memory.host_moments and spec.scope != "shared", host_dtype=getattr(torch, self.memory.host_moments_dtype))

    # ------------------------------------------------------------------ registry
    @property
    def agents(self) -> list[str]:
        return list(self._agents)

    @property
    def levels(self) -> list[LevelSpec]:
        return list(self.stack.levels)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def mix(self) -> dict[str, float]:
        """Each level's current mixing coefficient α_l(t) (read-only view of the level states)."""
        return {name: st.mix for name, st in self.states.items()}

    def add_agents(self, names: Sequence[str]) -> list[int]:
        """Register agents; their per-agent and per-task slots are allocated. Returns their indices."""
        for n in names:
            if not isinstance(n, str) or not n:
                raise ValueError(f"agent name must be a non-empty string, got {n!r}")
        dupes = sorted({n for n in names if n in self._index} | {n for n, c in Counter(names).items() if c > 1})
        if dupes:
            raise ValueError(f"agent names already taken: {', '.join(dupes)}")
        start = len(self._agents)
        need = start + len(names)
        for lv in self.stack.levels:
            capacity = self.capacity_for(lv.name, need)
            for bank in self.banks(lv.name):
                bank.grow(capacity)
        self._agents.extend(names)
        self._index.update({n: start + i for i, n in enumerate(names)})
        return list(range(start, need))

    def capacity_for(self, level: str, n_agents: int) -> int:
        """Slots ``level``'s banks hold once ``n_agents`` agents are registered: 1 if shared, else doubling."""
        if self.stack.get(level).scope == "shared":
            return 1
        return _doubled(max(1, self.n_slots(level)), n_agents)

    def agent_index(self, agents: Sequence[str]) -> list[int]:
        try:
            return [self._index[a] for a in agents]
        except (KeyError, TypeError):
            unknown = sorted({str(a) for a in agents if not isinstance(a, str) or a not in self._index})
            raise ValueError(f"unknown agents: {', '.join(unknown)}; known agents: {self._agents or 'none (call add_agent first)'}") from None

    def slot_of(self, level: str, agent: str) -> int:
        """The slot ``agent`` uses in ``level``: 0 for shared levels, the agent's index otherwise."""
        return self.slots_of(level, [agent])[0]

    def slots_of(self, level: str, agents: Sequence[str]) -> list[int]:
        idx = self.agent_index(agents)
        return [0] * len(idx) if self.stack.get(level).scope == "shared" else idx

    # ------------------------------------------------------------------ the stack while running
    def insert_level(self, spec: LevelSpec, index: int, origin: str | None = None) -> None:
        """Add level ``spec`` at position ``index`` of the stack (0: slowest), empty (B = 0: it adds nothing).

        Every wrapped layer whose leaf name ``spec`` targets gets a bank with one slot per
        agent (or one, shared), in the slot layout of the other levels; the level gets its
        state from the spec, its own optimizer and no written slots. ``origin`` names the
        configured level it descends from (``None``: it is configured itself).
        """
        stack = StackSpec(levels=(*self.stack.levels[:index], spec, *self.stack.levels[index:]))
        n = 1 if spec.scope == "shared" else _doubled(1, len(self._agents))
        found = False
        for path, layer in self.layers.items():
            if spec.wraps(path):
                bank = LevelBank(n, spec.rank, layer.in_features, layer.out_features, key=f"{self.seed}/{spec.name}/{path}", store_init=self.memory.store_init, slot_grads=self.memory.slot_grads)
                layer.banks[spec.name] = bank.to(device=layer.weight.device, dtype=torch.float32)
                layer.scales[spec.name] = spec.scale
                found = True
        if not found:
            raise ValueError(f"level {spec.name!r}: targets {list(spec.targets)} match no wrapped layer")
        self.stack = stack
        self._order_banks()
        self.states[spec.name] = LevelState.from_spec(spec)
        self.optimizers[spec.name] = self._optimizer(spec)
        self.written[spec.name] = set()
        for p in self.level_params(spec.name).values():
            p.requires_grad_(spec.trainable)
        if origin is not None:
            self.origin[spec.name] = origin

    def remove_level(self, name: str) -> None:
        """Take level ``name`` out of the stack: its banks, state, optimizer and bookkeeping go."""
        if len(self.stack.levels) == 1:
            raise ValueError(f"cannot remove {name!r}: the stack's only level")
        self.stack = StackSpec(levels=tuple(lv for lv in self.stack.levels if lv.name != self.stack.get(name).name))
        for layer in self.layers.values():
            if name in layer.banks:
                del layer.banks[name]
                del layer.scales[name]
        del self.states[name], self.optimizers[name], self.written[name]
        self.origin.pop(name, None)

    def set_stack(self, stack: StackSpec, origin: Mapping[str, str]) -> None:
        """Make the stack ``stack`` (a checkpoint's): levels not in it, or specified otherwise, go; missing ones come, empty."""
        for lv in self.levels:
            if lv not in stack.levels:
                self.remove_level(lv.name)
        for i, lv in enumerate(stack.levels):
            if lv.name not in self.stack.names():
                self.insert_level(lv, i, origin.get(lv.name))
        self.origin = {k: v for k, v in origin.items() if k in self.stack.names()}

    def _order_banks(self) -> None:
        """Each layer's banks in stack order: the forward sums the levels' terms in one order whatever the history."""
        order = self.stack.names()
        for layer in self.layers.values():
            layer.banks = nn.ModuleDict({name: layer.banks[name] for name in order if name in layer.banks})

    def with_grown(self, levels: Sequence[str]) -> list[str]:
        """``levels`` and every grown level descending from one of them (what the fast steps train)."""
        return [lv for lv in self.stack.names() if lv in levels or self.origin.get(lv) in levels]

    @torch.no_grad()
    def set_factors(self, level: str, factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Overwrite every slot's ``(B (S, out, r), A (S, r, in))`` of ``level`` per module path (a topology change)."""
        for path, bank in self.named_banks(level):
            if path in factors:
                b, a = factors[path]
                bank.B.copy_(b)
                bank.A.copy_(a)
        self.mark_written(level)

    # ------------------------------------------------------------------ banks
    def banks(self, level: str) -> Iterator[LevelBank]:
        """Every wrapped layer's bank of ``level``."""
        for _, bank in self.named_banks(level):
            yield bank

    def named_banks(self, level: str) -> Iterator[tuple[str, LevelBank]]:
        for path, layer in self.layers.items():
            if level in layer.banks:
                yield path, cast(LevelBank, layer.banks[level])

    def zero_grad(self) -> None:
        """``model.zero_grad(set_to_none=True)`` over the banks alone: the only parameters that take a gradient
        (the base is frozen), without walking every module of the model."""
        for layer in self.layers.values():
            for bank in layer.banks.values():
                bank.A.grad = None
                bank.B.grad = None

    def n_slots(self, level: str) -> int:
        return next(iter(self.banks(level))).n_slots

    def level_params(self, level: str) -> dict[str, nn.Parameter]:
        params: dict[str, nn.Parameter] = {}
        for path, bank in self.named_banks(level):
            params[f"{path}.A"] = bank.A
            params[f"{path}.B"] = bank.B
        return params

    def is_zero(self, level: str, slots: Sequence[int] | None = None) -> bool:
        """Whether ``B`` is known to be exactly zero in ``slots`` (default: every slot) of ``level``."""
        written = self.written[level]
        return not written if slots is None else written.isdisjoint(slots)

    def zero_levels(self) -> set[str]:
        """Shared levels whose B is exactly zero in every module: they add exactly nothing."""
        return {lv.name for lv in self.stack.levels if lv.scope == "shared" and self.is_zero(lv.name)}

    def mark_written(self, level: str, slots: Sequence[int] | None = None) -> None:
        """Record that ``slots`` (default: all) of ``level`` may now hold a non-zero B."""
        self.written[level].update(range(self.n_slots(level)) if slots is None else slots)

    @torch.no_grad()
    def rescan(self) -> None:
        """Find the slots with a non-zero B by reading every bank (after loading weights from outside)."""
        for lv in self.stack.levels:
            nonzero = torch.zeros(self.n_slots(lv.name), dtype=torch.bool, device=self.device)
            for bank in self.banks(lv.name):
                nonzero |= bank.B.detach().flatten(1).ne(0).any(1).to(nonzero.device)
            self.written[lv.name] = {int(i) for i in nonzero.nonzero().flatten().tolist()}

    # ------------------------------------------------------------------ routing
    def index(self, ids: Sequence[int]) -> torch.Tensor:
        """``ids`` as a long tensor on the model's device, cached: routing reuses a handful of them."""
        key = tuple(ids)
        t = self._device_index.get(key)
        if t is None:
            t = to_device(torch.tensor(key, dtype=torch.long), self.device)
            self._device_index[key] = t
            if len(self._device_index) > _INDEX_CACHE:
                self._device_index.popitem(last=False)
        else:
            self._device_index.move_to_end(key)
        return t

    def check_levels(self, levels: Sequence[str] | frozenset[str] | None) -> frozenset[str] | None:
        if levels is None:
            return None
        unknown = sorted(set(levels) - set(self.stack.names()))
        if unknown:
            raise ValueError(f"unknown levels: {', '.join(unknown)}; levels are {self.stack.names()}")
        return frozenset(levels)

    def route(
        self,
        agents: Sequence[str],
        levels: Sequence[str] | frozenset[str] | None = None,
        gates: dict[str, torch.Tensor] | None = None,
        training: Sequence[str] = (),
    ) -> Routing:
        """The routing of a batch whose row i belongs to ``agents[i]``; reads nothing from the device.

        Shared levels that are exactly zero and not being trained are skipped: the result
        is the same (they add +0.0) and a fresh hive's slow levels cost nothing.
        """
        ids = self.agent_index(agents)
        idx = self.index(ids)
        slots = {lv.name: idx for lv in self.stack.levels if lv.scope != "shared"}
        host = tuple(ids)
        uniform = frozenset(slots) if len(set(ids)) == 1 else frozenset()
        active = self.check_levels(levels)
        skip = self.zero_levels() - set(training)
        if skip:
            active = frozenset((active if active is not None else set(self.stack.names())) - skip)
        return Routing(slots=slots, active=active, mix=self.mix, gates=gates or {}, uniform=uniform, host_slots=dict.fromkeys(slots, host))

    # ------------------------------------------------------------------ write primitives
    def step(self, level: str, grads: Mapping[str, torch.Tensor] | None, slots: Sequence[int], lr: float | None = None, found_inf: torch.Tensor | None = None) -> None:
        """One optimizer step of ``level`` on ``slots``, with the level's current step size.

        ``grads`` maps parameter names (as :meth:`level_params`) to slot-shaped gradients;
        ``None`` uses the gradients a backward left in ``.grad``. ``lr`` overrides the step
        size of :attr:`LevelState.step_size`; ``found_inf`` skips the step on the device when
        non-zero (:meth:`SlotAdamW.step`).
        """
        params = self.level_params(level)
        if grads is not None:
            unknown = sorted(set(grads) - set(params))
            if unknown:
                raise ValueError(f"grads for {level!r} name unknown parameters: {unknown[:3]}")
            for name, p in params.items():
                g = grads.get(name)
                p.grad = None if g is None else g.to(p.device, p.dtype)
        lr = self.states[level].step_size if lr is None else lr
        self.optimizers[level].step(params, slots, lr=lr, found_inf=found_inf)
        if any(p.grad is not None for name, p in params.items() if name.endswith(".B")):
            self.mark_written(level, slots)
        if grads is not None:
            for p in params.values():
                p.grad = None

    @torch.no_grad()
    def add_delta(self, level: str, slot: int, delta: Mapping[str, ModuleDelta]) -> float:
        """Add a ΔW-space change to ``slot`` of ``level``, re-factored into the level's rank.

        ``delta`` maps module paths to the change of the level's own term ``(a_l/r_l)·B·A``
        (before the mix), dense ``(out, in)`` or as factors ``(U, V)``. The new factors are the
        best rank-``r_l`` approximation of ``B·A + ΔW·r_l/a_l`` (truncated SVD through QR of
        the factors), each rank-1 component's ``A`` row at the norm of the slot's init row
        (:func:`~lorahive.core.lowrank.balanced`: decay toward init then shrinks it, as it
        does a learned pattern; a zero component gets its init row back). Returns the
        truncation error: the Frobenius norm of what did not fit, in ΔW space, over all
        modules. The slot's optimizer state is left as it was.
        """
        return self.add_deltas(level, [slot], [delta])[0]

    @torch.no_grad()
    def add_deltas(self, level: str, slots: Sequence[int], deltas: Sequence[Mapping[str, ModuleDelta]]) -> list[float]:
        """:meth:`add_delta` for several distinct slots at once; each slot's truncation error.

        The re-factorings are batched over the slots and the modules of one shape (a few QR
        and SVD calls per shape instead of a few per module and slot), and the errors are
        read back once.
        """
        if len(slots) != len(deltas):
            raise ValueError(f"add_deltas({level!r}): {len(slots)} slots but {len(deltas)} deltas")
        if len(set(slots)) != len(slots):
            raise ValueError(f"add_deltas({level!r}): slots must be distinct, got {list(slots)}")
        spec = self.stack.get(level)
        layers = dict(self.named_banks(level))
        groups: dict[tuple[int, ...], list[tuple[int, str, torch.Tensor, torch.Tensor]]] = {}
        for j, delta in enumerate(deltas):
            unknown = sorted(set(delta) - set(layers))
            if unknown:
                raise ValueError(f"add_delta({level!r}): unknown modules {unknown[:3]}; level {level!r} wraps {len(layers)} modules")
            for path, change in delta.items():
                if isinstance(change, torch.Tensor):
                    u, v = change, torch.eye(change.shape[1], device=change.device, dtype=change.dtype)
                else:
                    u, v = change
                bank = layers[path]
                groups.setdefault((bank.out_features, bank.in_features, u.shape[1]), []).append((j, path, u, v))
        err2 = torch.zeros(len(slots), device=self.device)
        for items in groups.values():
            left = torch.stack([torch.cat([layers[p].B[slots[j]].float(), u.to(self.device).float() / spec.scale], 1) for j, p, u, _ in items])  # (n, out, r + k)
            right = torch.stack([torch.cat([layers[p].A[slots[j]].float(), v.to(self.device).float()], 0) for j, p, _, v in items])  # (n, r + k, in)
            new_b, new_a, dropped = refactor(left, right, spec.rank)
            init = torch.stack([layers[p].init_row(slots[j]).float() for j, p, _, _ in items])  # (n, r, in)
            new_b, new_a = balanced(new_b, new_a, init)  # A rows at the init's scale, as learned patterns hold them
            for i, (j, p, _, _) in enumerate(items):
                bank = layers[p]
                bank.B[slots[j]] = new_b[i].to(bank.B.dtype)
                bank.A[slots[j]] = new_a[i].to(bank.A.dtype)
            err2.index_add_(0, torch.tensor([j for j, _, _, _ in items], device=self.device), dropped.square())
        self.mark_written(level, list(slots))
        return (spec.scale * err2.sqrt()).tolist()

    @torch.no_grad()
    def decay_toward_init(self, level: str, slots: Sequence[int], rate: float | torch.Tensor) -> None:
        """Pull ``slots`` of ``level`` a fraction ``rate`` ∈ [0, 1] of the way back to their init snapshot.

        ``rate`` is one number for whole slots, or a ``(len(slots), r)`` tensor of one rate per
        pattern (the ``i``-th rank-1 component ``B[s][:, i]·A[s][i, :]``, the granularity
        screening works at): ``B[s][:, i]`` shrinks by ``1 − rate`` and ``A[s][i, :]`` moves
        that fraction toward ``A0[s][i, :]``. A tensor rate is not checked on the host.
        """
        per_pattern = isinstance(rate, torch.Tensor)
        if not per_pattern and not 0.0 <= rate <= 1.0:
            raise ValueError(f"decay rate must be in [0, 1], got {rate}")
        if not slots or (not per_pattern and rate == 0.0):
            return
        ids = sorted(set(slots))
        if per_pattern and ids != list(slots):
            raise ValueError("decay_toward_init: with per-pattern rates, slots must be sorted and distinct")
        idx = self.index(ids)
        r = rate.to(self.device, torch.float32) if isinstance(rate, torch.Tensor) else None
        toward: dict[torch.dtype, torch.Tensor] = {}  # A's lerp weights and B's factors by dtype, made once, not per module
        keep: dict[torch.dtype, torch.Tensor] = {}
        for bank in self.banks(level):
            a = bank.A.index_select(0, idx)
            b = bank.B.index_select(0, idx)
            if r is None:
                a.lerp_(bank.init_rows(ids, idx), float(rate))
                b.mul_(1.0 - float(rate))
            else:
                if a.dtype not in toward:
                    toward[a.dtype] = r[:, :, None].to(a.dtype)
                if b.dtype not in keep:
                    keep[b.dtype] = (1.0 - r)[:, None, :].to(b.dtype)
                a.lerp_(bank.init_rows(ids, idx), toward[a.dtype])
                b.mul_(keep[b.dtype])
            bank.A.index_copy_(0, idx, a)
            bank.B.index_copy_(0, idx, b)
        if not per_pattern and rate == 1.0:
            self.written[level].difference_update(slots)

    @torch.no_grad()
    def scale(self, level: str, slots: Sequence[int], factor: float) -> None:
        """Multiply the ΔW of ``slots`` of ``level`` by ``factor`` ≥ 0 (B scaled; A and the optimizer state kept).

        ΔW = (a_l/r_l)·B·A is linear in B, so this is exact: how a stage's ΔW is projected
        back onto its norm budget (runtime/stages.py).
        """
        if not factor >= 0.0:
            raise ValueError(f"scale factor must be ≥ 0, got {factor}")
        if not slots or factor == 1.0:
            return
        idx = self.index(sorted(set(slots)))
        for bank in self.banks(level):
            bank.B.index_copy_(0, idx, bank.B.index_select(0, idx) * factor)
        if factor == 0.0:
            self.written[level].difference_update(slots)

    def forget_moments(self, level: str, slots: Sequence[int]) -> None:
        """Clear the optimizer moments and step counts of ``slots`` of ``level`` (their factors were re-based)."""
        self.optimizers[level].reset(sorted(set(slots)))

    @torch.no_grad()
    def reset(self, level: str, slots: Sequence[int]) -> None:
        """Put ``slots`` of ``level`` back to their init snapshot, with empty optimizer state."""
        if not slots:
            return
        ids = sorted(set(slots))
        idx = self.index(ids)
        for bank in self.banks(level):
            bank.reset(idx, ids)
        self.optimizers[level].reset(ids, idx)
        self.written[level].difference_update(ids)

    @torch.no_grad()
    def slot_rows(self, level: str, slots: Sequence[int]) -> dict[str, torch.Tensor]:
        """Everything ``slots`` of ``level`` hold — factors, init snapshot, optimizer state — as CPU rows.

        Keys are ``<module>/A|B|A0`` and ``optim/<param>:<moment>``; row ``i`` is ``slots[i]``.
        :meth:`load_slot_rows` writes them into another core with the same stack.
        """
        idx = torch.tensor(list(slots), dtype=torch.long)
        rows = {f"{path}/{k}": t.detach().cpu().index_select(0, idx) for path, bank in self.named_banks(level) for k, t in (("A", bank.A), ("B", bank.B))}
        rows.update({f"{path}/A0": bank.init_rows(list(slots)).cpu() for path, bank in self.named_banks(level)})
        rows.update({f"optim/{k}": v for k, v in self.optimizers[level].slot_state(slots).items()})
        return rows

    @torch.no_grad()
    def load_slot_rows(self, level: str, slots: Sequence[int], rows: Mapping[str, torch.Tensor]) -> None:
        """Write :meth:`slot_rows` of another core into ``slots`` of ``level`` (bank and optimizer state together)."""
        if not slots:
            return
        idx = self.index(list(slots))
        for path, bank in self.named_banks(level):  # every init checked (or stored) before any factor is written
            bank.load_init(slots, rows[f"{path}/A0"])
        for path, bank in self.named_banks(level):
            for k, t in (("A", bank.A), ("B", bank.B)):
                t.index_copy_(0, idx, rows[f"{path}/{k}"].to(t.device, t.dtype))
        optim = {k.removeprefix("optim/"): v for k, v in rows.items() if k.startswith("optim/")}
        self.optimizers[level].load_slot_state(slots, self.level_params(level), optim)
        nonzero = [s for i, s in enumerate(slots) if any(bool(rows[f"{p}/B"][i].ne(0).any()) for p, _ in self.named_banks(level))]
        self.written[level].difference_update(slots)
        self.mark_written(level, nonzero)

    @torch.no_grad()
    def load_slots(self, level: str, slots: Sequence[int], factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write given factors into ``slots`` of ``level``, with empty optimizer state (their factors were re-based).

        ``factors`` maps every module path of the level to ``(A (n, r, in), B (n, out, r))``,
        row ``i`` for ``slots[i]`` (distinct).
        """
        if not slots:
            return
        if len(set(slots)) != len(slots) or set(factors) != {p for p, _ in self.named_banks(level)}:
            raise ValueError(f"load_slots({level!r}): distinct slots and factors for every module of the level are needed")
        idx = self.index(list(slots))
        for path, bank in self.named_banks(level):
            a, b = factors[path]
            bank.A.index_copy_(0, idx, a.to(bank.A.device, bank.A.dtype))
            bank.B.index_copy_(0, idx, b.to(bank.B.device, bank.B.dtype))
        self.optimizers[level].reset(sorted(slots))
        self.mark_written(level, list(slots))


def _doubled(capacity: int, need: int) -> int:
    """``capacity`` doubled until it holds ``need`` slots (banks grow by doubling)."""
    while capacity < need:
        capacity *= 2
    return capacity
