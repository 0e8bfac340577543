"""Context modes (seed 004 §5, "collapse"; DESIGN.md §3): the context level settles on one mode per kind of input.

Before a task, the context level is a superposition of ``K`` modes; the input collapses it
onto one, only that one is used, and the result echoes back into it. Here an input is one
agent's task of a tick (the context level is per task), read as

    v = mean over its support prompts of mean over the prompt's tokens of h_L(prompt)

the frozen base model's final hidden state (one extra forward over the prompts, every level
off, so routing does not drift as the levels learn). In the ``draw`` phase, after the other
draw mechanisms (replay) have set the support, the running mean ``c`` of every input seen
takes this tick's inputs, then each input in agent order is routed (hard):

    cos_m = cos(v − c, key_m − c)   over the opened modes m
    mode  = a free mode, opened with key v,   if none is open or max cos_m < open_below and one is free
            argmax cos_m                        otherwise
    key_mode ← key_ema · key_mode + (1 − key_ema) · v

Subtracting ``c`` matters: pooled hidden states share one large direction (raw cosines of
the embedded model are ≥ 0.98 within a task type and 0.92 on average between types); centred, they measure ≥ 0.45
within a type and ≤ 0.19 between types (``benchmarks/context_router.py``). The agent's
context slot is then loaded with its mode's factors (a freshly opened mode takes the slot's
init snapshot), and the solve phase does not reset it. In the ``decay`` phase, after
migrations and screening, each used mode takes what its slots became:

    mode ← (1 − rate) · mode + rate · mean of the slots' (A, B)      over its agents that cleared the bar

(the slots started from the same factors, so the factor mean is the ΔW mean to first order;
exact for one agent), and an opened mode no agent used has its ``B`` — its ΔW — scaled by
``1 − forget``. With ``rehearse`` > 0 a *past* mode — one no agent is routed to this tick —
then learns from the tick's replayed examples of its task types (mechanisms.replay) for that
many steps, loaded into a context slot over the levels as they are now: the slower levels go on
learning after a mode's last task, and a mode left as it was co-adapted with what they were
then. An input that arrives when all modes are open and none is near still takes
the nearest: a kind of input first seen late shares a mode (the ledger's cosine shows it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, final

import torch

from lorahive.config import ContextModesConfig
from lorahive.core.pins import RowPins
from lorahive.learning import as_answer, pack_prompts
from lorahive.learning.objective import hidden_states
from lorahive.mechanisms.base import Action, TickView
from lorahive.tensors import to_device

__all__ = ["ContextModes", "Routed", "pooled_prompts", "route", "route_spread"]

#: Prompts per forward of the router's pass.
CHUNK = 32


@torch.no_grad()
def pooled_prompts(core: Any, prompts: Sequence[str]) -> torch.Tensor:
    """``(N, H)``: the base model's final hidden state of each prompt, averaged over its tokens (every level off)."""
    out = []
    for i in range(0, len(prompts), CHUNK):
        part = list(prompts[i : i + CHUNK])
        batch = pack_prompts(core.tokenizer, part, core.max_length).to(core.device)
        with core.routing.use(core.route([core.agents[0]] * len(part), levels=[])):
            h = hidden_states(core.model, batch).float()  # (B, T, H)
        mask = batch.attention_mask[..., None].to(h.dtype)  # (B, T, 1)
        out.append((h * mask).sum(1) / mask.sum(1).clamp_min(1.0))
    return torch.cat(out).cpu()  # one wait for the device, not one per chunk


@dataclass(frozen=True)
class Routed:
    """Where the router sent each input: its mode, its centred cosine to that mode's key before (``None``: opened it), opened modes."""

    modes: list[int]
    cosines: list[float | None]
    opened: list[int]


def _cos(u: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``(K,)`` cosines of ``u (H,)`` to each row of ``keys (K, H)``; 0 where a vector is zero."""
    denom = u.norm() * keys.norm(dim=1)
    return torch.where(denom > 0, keys @ u / denom.clamp_min(1e-30), torch.zeros_like(denom))


def route(vectors: torch.Tensor, keys: torch.Tensor, opened: torch.Tensor, center: torch.Tensor, open_below: float, key_ema: float) -> Routed:
    """Route ``vectors (N, H)`` in order over ``keys (K, H)``; ``keys`` and ``opened (K,)`` bool are updated in place."""
    modes: list[int] = []
    cosines: list[float | None] = []
    new: list[int] = []
    for v in vectors:
        live = opened.nonzero().flatten().tolist()
        cos = _cos(v - center, keys[live] - center) if live else torch.zeros(0)
        best = int(cos.argmax()) if live else -1
        free = (~opened).nonzero().flatten().tolist()
        if free and (not live or float(cos[best]) < open_below):
            m, c = free[0], None
            opened[m] = True
            keys[m] = v
            new.append(m)
        else:
            m, c = live[best], float(cos[best])
            keys[m] = key_ema * keys[m] + (1.0 - key_ema) * v
        modes.append(m)
        cosines.append(c)
    return Routed(modes, cosines, new)


def route_spread(
    vectors: torch.Tensor, keys: torch.Tensor, opened: torch.Tensor, spread: torch.Tensor, count: list[int], center: torch.Tensor, open_spread: float, key_ema: float
) -> Routed:
    """Route ``vectors (N, H)`` in order by the spread rule; ``keys``, ``opened``, ``spread (K,)`` and ``count`` are updated in place.

    Each input goes to the nearest opened key (squared distance ``d²``) unless ``d²`` exceeds
    ``open_spread`` × that mode's spread and a mode is free: then it opens one (key = the
    input). A mode's spread is the running mean squared distance of its inputs to its key
    (``key_ema``); while a mode has one input it is the median squared distance of this
    call's inputs to their mean (unknown for a single input: it joins). The cosines reported
    are centred on ``center``, as :func:`route` measures them.
    """
    prior = float(((vectors - vectors.mean(0)) ** 2).sum(1).median()) if len(vectors) > 1 else None
    modes: list[int] = []
    cosines: list[float | None] = []
    new: list[int] = []
    for v in vectors:
        live = opened.nonzero().flatten().tolist()
        free = (~opened).nonzero().flatten().tolist()
        if live:
            d2 = ((keys[live] - v) ** 2).sum(1)
            best = int(d2.argmin())
            m, dist = live[best], float(d2[best])
            scale = float(spread[m]) if count[m] >= 2 else prior
        if not live or (free and scale is not None and dist > open_spread * scale):
            m = free[0]
            opened[m], keys[m], spread[m], count[m] = True, v, 0.0, 1
            new.append(m)
            cosines.append(None)
        else:
            cosines.append(float(_cos(v - center, (keys[m] - center)[None])[0]))
            spread[m] = dist if count[m] < 2 else key_ema * float(spread[m]) + (1.0 - key_ema) * dist
            count[m] += 1
            keys[m] = key_ema * keys[m] + (1.0 - key_ema) * v
        modes.append(m)
    return Routed(modes, cosines, new)


@final
class ContextModes:
    """Routes each task to one of the context level's modes (``draw``) and reinforces the modes used (``decay``)."""

    name = "context_modes"
    phases: tuple[str, ...] = ("draw", "decay")

    def __init__(self, cfg: ContextModesConfig, level: str) -> None:
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.level = level
        self.keys: torch.Tensor | None = None  # (K, H), made at the first input
        self.opened = torch.zeros(cfg.modes, dtype=torch.bool)
        self.uses = [0] * cfg.modes
        self.center: torch.Tensor | None = None  # (H,) running mean of every input seen
        self.spread = torch.zeros(cfg.modes)  # the spread rule: each mode's running mean squared distance of its inputs to its key
        self.count = [0] * cfg.modes  # inputs each mode was opened by or took (the spread rule)
        self.seen = 0
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # module path -> A (K, r, in), B (K, out, r)
        self.routed: dict[str, int] = {}  # this tick: agent -> mode (between draw and decay)
        self.type_modes: dict[str, int] = {}  # task type -> the mode its last task was routed to (replayed rows run it)
        self.rehearsal: dict[int, list[tuple[str, str]]] = {}  # this tick: past mode -> the replayed examples of its types (between draw and decay)

    # ------------------------------------------------------------------ draw
    def run(self, view: TickView) -> Action | None:
        if view.phase == "draw":
            return self._draw(view)
        action = self._reinforce(view)
        if action is None:
            return None
        rehearsed = self._rehearse(view)
        if rehearsed:
            action.detail["rehearsed"] = rehearsed
        action.detail["norm"] = self.norms(view)  # the modes as the tick leaves them
        return action

    def _draw(self, view: TickView) -> Action | None:
        view.core.pins = None
        agents = [a for a, exs in view.support.items() if exs]
        if not agents:
            return None
        replayed: dict[str, dict[tuple[str, str], str]] = view.shared.get("replayed", {})
        own = {a: [p for p, ans in view.support[a] if (p, ans) not in replayed.get(a, {})] or [p for p, _ in view.support[a]] for a in agents}
        pooled = pooled_prompts(view.core, [p for a in agents for p in own[a]])  # (P, H): the task's own prompts, not the replayed ones
        vectors = torch.stack([part.mean(0) for part in pooled.split([len(own[a]) for a in agents])])  # (N, H)
        routed = self.route_inputs(vectors)
        self._load(view, agents, routed)
        self.routed = dict(zip(agents, routed.modes, strict=True))
        for a, m in self.routed.items():
            self.uses[m] += 1
            if view.task_types.get(a):
                self.type_modes[view.task_types[a]] = m
        pinned = self._pin(view, replayed)
        self.rehearsal = self._past_rows(replayed)
        view.shared["context_modes"] = dict(self.routed)  # the solve phase keeps these context slots
        cosines = {a: (None if c is None else round(c, 4)) for a, c in zip(agents, routed.cosines, strict=True)}
        detail = {"level": self.level, "modes": dict(self.routed), "cosine": cosines, "opened": routed.opened, "uses": list(self.uses), "pinned": pinned}
        return Action("route", detail)

    def _pin(self, view: TickView, replayed: dict[str, dict[tuple[str, str], str]]) -> int:
        """Pin every replayed row whose task type last took another mode than its agent's task to that mode (core/pins.py); how many."""
        if not self.cfg.replay_own_mode:
            return 0
        rows = {  # keyed as the learning calls carry their rows: the answer after one space
            (a, p, as_answer(ans)): self.type_modes[t]
            for a, exs in replayed.items()
            if a in self.routed
            for (p, ans), t in exs.items()
            if t in self.type_modes and self.type_modes[t] != self.routed[a]
        }
        if rows:
            view.core.pins = RowPins(self.level, dict(self.factors), rows)
        return len(rows)

    def _past_rows(self, replayed: dict[str, dict[tuple[str, str], str]]) -> dict[int, list[tuple[str, str]]]:
        """This tick's replayed examples by the mode their task type took, for the modes no agent is routed to now."""
        if not self.cfg.rehearse:
            return {}
        current = set(self.routed.values())
        rows: dict[int, list[tuple[str, str]]] = {}
        for exs in replayed.values():
            for ex, t in exs.items():
                m = self.type_modes.get(t)
                if m is not None and m not in current:
                    rows.setdefault(m, []).append(ex)
        return rows

    def route_inputs(self, vectors: torch.Tensor) -> Routed:
        """One tick's inputs ``(N, H)``, in order, through the configured rule: the centre takes them first; keys, modes and spreads are updated."""
        self._fold_center(vectors)
        if self.keys is None:
            self.keys = torch.zeros(self.cfg.modes, vectors.shape[1])
        assert self.center is not None
        if self.cfg.open_rule == "spread":
            return route_spread(vectors, self.keys, self.opened, self.spread, self.count, self.center, self.cfg.open_spread, self.cfg.key_ema)
        return route(vectors, self.keys, self.opened, self.center, self.cfg.open_below, self.cfg.key_ema)

    def _fold_center(self, vectors: torch.Tensor) -> None:
        total = vectors.sum(0) if self.center is None else self.center * self.seen + vectors.sum(0)
        self.seen += len(vectors)
        self.center = total / self.seen

    @torch.no_grad()
    def _load(self, view: TickView, agents: list[str], routed: Routed) -> None:
        """Every agent's context slot from its mode; a mode opened now takes its opener's init snapshot."""
        core = view.core
        slots = [core.slot_of(self.level, a) for a in agents]
        core.reset(self.level, slots)
        if not self.factors:
            self.factors = {p: (bank.A.new_zeros(self.cfg.modes, *bank.A.shape[1:]), bank.B.new_zeros(self.cfg.modes, *bank.B.shape[1:])) for p, bank in core.named_banks(self.level)}
        self._to(core)
        openers = {m: slots[routed.modes.index(m)] for m in routed.opened}
        for path, bank in core.named_banks(self.level):
            a, b = self.factors[path]
            for m, s in openers.items():
                a[m], b[m] = bank.A.detach()[s], bank.B.detach()[s]
        rest = [(s, m) for s, m in zip(slots, routed.modes, strict=True) if openers.get(m) != s]
        if rest:
            ids = core.index([m for _, m in rest])  # one device index for every module: a copy per module waits for the device each time
            core.load_slots(self.level, [s for s, _ in rest], {p: (a.index_select(0, ids), b.index_select(0, ids)) for p, (a, b) in self.factors.items()})

    def _to(self, core: Any) -> None:
        """The modes' factors on the level's device and dtype (they come back from a checkpoint on the CPU)."""
        for path, bank in core.named_banks(self.level):
            a, b = self.factors[path]
            self.factors[path] = (a.to(bank.A.device, bank.A.dtype), b.to(bank.B.device, bank.B.dtype))

    # ------------------------------------------------------------------ inference
    def pick(self, core: Any, prompts: Sequence[str]) -> int | None:
        """The opened mode nearest to the mean pooled state of ``prompts`` by the configured rule's measure (squared distance, or centred cosine); nothing is opened or moved. ``None``: no mode is open."""
        if not self.opened.any() or not self.factors or not prompts:
            return None
        return self.nearest(pooled_prompts(core, prompts).mean(0))

    def nearest(self, v: torch.Tensor) -> int | None:
        """The opened mode nearest to a pooled state ``v (H,)`` by the configured rule's measure; ``None``: no mode is open."""
        live = self.opened.nonzero().flatten().tolist()
        if not live or self.keys is None or self.center is None:
            return None
        if self.cfg.open_rule == "spread":
            return live[int(((self.keys[live] - v) ** 2).sum(1).argmin())]
        return live[int(_cos(v - self.center, self.keys[live] - self.center).argmax())]

    @torch.no_grad()
    def load_mode(self, core: Any, agents: Sequence[str], mode: int) -> None:
        """``agents``' context slots hold mode ``mode`` (their optimizer state emptied, as at every draw)."""
        self._to(core)
        slots = [core.slot_of(self.level, a) for a in agents]
        ids = core.index([mode] * len(slots))
        core.load_slots(self.level, slots, {p: (a.index_select(0, ids), b.index_select(0, ids)) for p, (a, b) in self.factors.items()})

    # ------------------------------------------------------------------ decay
    @torch.no_grad()
    def _reinforce(self, view: TickView) -> Action | None:
        view.core.pins = None  # the tick's learning is over
        if not self.routed:
            return None
        core = view.core
        self._to(core)
        users: dict[int, list[str]] = {}
        for agent, m in self.routed.items():
            if view.quality.get(agent, 0.0) >= view.quality_bar:
                users.setdefault(m, []).append(agent)
        for m, agents in users.items():
            ids = core.index([core.slot_of(self.level, a) for a in agents])
            for path, bank in core.named_banks(self.level):
                a, b = self.factors[path]
                a[m].lerp_(bank.A.detach().index_select(0, ids).mean(0), self.cfg.rate)
                b[m].lerp_(bank.B.detach().index_select(0, ids).mean(0), self.cfg.rate)
        idle = [m for m in self.opened.nonzero().flatten().tolist() if m not in self.routed.values()]
        if idle and self.cfg.forget > 0:
            keep = torch.ones(self.cfg.modes)
            keep[idle] = 1.0 - self.cfg.forget
            keep = to_device(keep, core.device)[:, None, None]  # one copy (a list index per module waits for the device each time); × 1.0 keeps the rest exactly
            for _, b in self.factors.values():
                b.mul_(keep)
        self.routed = {}
        return Action("reinforce", {"level": self.level, "reinforced": {str(m): a for m, a in sorted(users.items())}, "idle": idle})

    def _rehearse(self, view: TickView) -> dict[str, int]:
        """Each past mode with replayed examples learns from them for ``rehearse`` steps on the levels as they are now; how many rows each took.

        Mode ``m`` is loaded into the context slot of one agent (agents in order, one mode each),
        the context level alone learns on that mode's rows (the agent's other levels run as
        they are), the mode moves ``rehearse_rate`` of the way to what the slot became and the
        agent's own slot is restored.
        """
        rows, self.rehearsal = self.rehearsal, {}
        if not rows or view.learn is None or not self.factors:
            return {}
        core = view.core
        modes = sorted(rows)[: len(core.agents)]
        agents = list(core.agents)[: len(modes)]
        slots = core.slots_of(self.level, agents)
        self._to(core)
        idx, ids = core.index(slots), core.index(modes)
        with torch.no_grad():
            saved = {p: (bank.A.detach().index_select(0, idx), bank.B.detach().index_select(0, idx)) for p, bank in core.named_banks(self.level)}
            core.load_slots(self.level, slots, {p: (a.index_select(0, ids), b.index_select(0, ids)) for p, (a, b) in self.factors.items()})
        view.learn({a: rows[m] for a, m in zip(agents, modes, strict=True)}, self.cfg.rehearse, [self.level])
        w = self.cfg.rehearse_rate
        with torch.no_grad():
            for path, bank in core.named_banks(self.level):
                a, b = self.factors[path]
                a.index_copy_(0, ids, a.index_select(0, ids).lerp_(bank.A.detach().index_select(0, idx).to(a.dtype), w))
                b.index_copy_(0, ids, b.index_select(0, ids).lerp_(bank.B.detach().index_select(0, idx).to(b.dtype), w))
            core.load_slots(self.level, slots, saved)
        return {str(m): len(rows[m]) for m in modes}

    def norms(self, view: TickView) -> dict[str, float]:
        """Each opened mode's ΔW norm ``‖(a/r)·B·A‖`` over the level's modules (``tr(BᵀB·AAᵀ)``, no out×in matrix), in float64 so equal weights give equal figures (a resumed run's ledger is compared bit for bit)."""
        live = self.opened.nonzero().flatten().tolist()
        if not live or not self.factors:
            return {}
        scale = view.core.stack.get(self.level).scale
        parts = [self.factors[p] for p in sorted(self.factors)]  # one order of the sum, whether the modes were built here or loaded
        ids = {dev: to_device(torch.tensor(live), dev) for dev in {a.device for a, _ in parts}}  # one copy of the index, not one per module
        rows = [(a.index_select(0, ids[a.device]).double(), b.index_select(0, ids[b.device]).double()) for a, b in parts]
        energy = sum(((b.transpose(1, 2) @ b) * (a @ a.transpose(1, 2))).sum((1, 2)) for a, b in rows)
        return {str(m): round(scale * float(e.clamp_min(0).sqrt()), 6) for m, e in zip(live, torch.as_tensor(energy).cpu(), strict=True)}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uses": list(self.uses), "seen": self.seen, "type_modes": dict(self.type_modes), "opened": self.opened.nonzero().flatten().tolist(), "count": list(self.count), "spread": self.spread}
        if self.keys is not None and self.center is not None:
            out |= {"keys": self.keys, "center": self.center}
        for path, (a, b) in self.factors.items():
            out[f"mode.{path}.A"], out[f"mode.{path}.B"] = a, b
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.uses = [int(u) for u in state.get("uses", [0] * self.cfg.modes)]
        self.seen = int(state.get("seen", 0))
        self.type_modes = {str(t): int(m) for t, m in state.get("type_modes", {}).items()}
        self.count = [int(c) for c in state.get("count", [0] * self.cfg.modes)]
        self.spread = state["spread"].float().clone() if "spread" in state else torch.zeros(self.cfg.modes)
        self.opened = torch.zeros(self.cfg.modes, dtype=torch.bool)
        self.opened[list(state.get("opened", []))] = True
        self.keys = state["keys"].float().clone() if "keys" in state else None
        self.center = state["center"].float().clone() if "center" in state else None
        paths = sorted({k.removeprefix("mode.")[: -len(".A")] for k in state if k.startswith("mode.") and k.endswith(".A")})
        self.factors = {p: (state[f"mode.{p}.A"].clone(), state[f"mode.{p}.B"].clone()) for p in paths}
        self.routed = {}
