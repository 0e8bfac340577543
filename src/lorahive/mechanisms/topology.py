"""Topology (seed 004 "Meta-архитектура"; DESIGN.md §3): a hierarchy that grows and shrinks.

The number of levels is not fixed by a designer; it follows the time scales the work shows.
Every tick, what learning wrote into each watched level — its weights after the ``apply``
phase minus at the ``draw`` phase (a per-task level starts each task from its init, so for
it: what it holds after ``apply``) — is sketched in ΔW space with fixed random probes per
module, ``u = mix·(a/r)·G·B·A·X`` for every slot (``G (d, out)``, ``X (in, d)``; a linear
sketch of ΔW, so a level keeps comparing with itself across re-factorings). What the level's
optimizer wrote this tick out of the momentum it already held at ``draw`` (AdamW's first moment
from earlier ticks, β1 = 0.9: :func:`carried_sketch`) is taken out first, so the series is the
tick's own learning. Left in, it makes the updates of a level stepped once a tick a moving
average of its gradients, an AR(1) of ρ ≈ β1 = 0.9 under any drift, which keeps the excess at
``b(1 − b)(1 − ρ)² ≤ 0.0025`` for a drift of share b: far under any ``split_excess``, so no
level ever split (experiment 8). AdamW's weight decay stays in. Over the last ``window`` ticks,
the normalised autocorrelation at lag τ is

    C(τ) = Σ_t ⟨u_t, u_{t+τ}⟩ / √(Σ_t ‖u_t‖² · Σ_t ‖u_{t+τ}‖²).

One time scale (updates an AR(1) process with any ρ, pure noise, a constant drift) gives
``C(2) = C(1)²``; a slow drift under fast noise gives a plateau, ``C(2) ≈ C(1)`` (for a drift
of energy share b: ``C(1) = C(2) = b``, the excess ``b − b²``). So:

    split   C(2) − C(1)² ≥ split_excess for ``checks`` ticks in a row: the level's dominant
            singular part (rank k = ``split_rank``, or half its rank) moves into a new level
            just above it — per-agent for a per-task level (it outlives the task), the
            source's scope otherwise — with the source's scale and mix and an inertia halfway
            to the next slower level's. The source keeps the rest; the function is the same.
    merge   two neighbours of one scope and targets, at least one of them grown, whose updates
            keep a windowed cosine ``Σ⟨u^a_t, u^b_t⟩ / √(Σ‖u^a‖² Σ‖u^b‖²) ≥ merge_threshold``
            for ``checks`` ticks: the grown one (the faster, when both are) is folded into the
            other by concatenating factors — a grown survivor takes rank r_a + r_b (up to
            ``max_rank``), so the function is the same; a configured survivor keeps its rank
            and the merge truncates (the error is in the ledger).

At most one change per tick, then ``cooldown`` ticks without one; the stack never exceeds
``max_levels`` and configured levels are never removed (other mechanisms and the config name
them). Changes go through :meth:`~lorahive.core.HiveCore.insert_level`,
:meth:`~lorahive.core.HiveCore.remove_level` and :meth:`~lorahive.core.HiveCore.set_factors`;
checkpoints carry the stack (``store/checkpoint.py``), the fast steps train a grown level when
they train the level it grew from (:meth:`~lorahive.core.HiveCore.with_grown`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, final

import torch

from lorahive.config import LevelSpec, TopologyConfig
from lorahive.core import HiveCore, refactor
from lorahive.mechanisms.base import Action, TickView

__all__ = ["Topology", "autocorrelation", "carried_sketch", "co_correlation", "level_sketch", "merge_levels", "split_level", "two_scale_excess"]

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module path -> (B (S, out, r), A (S, r, in))


def autocorrelation(history: Sequence[torch.Tensor], lag: int) -> float:
    """``C(lag)`` of a sequence of update vectors (0 when the window is too short or silent)."""
    if len(history) <= lag:
        return 0.0
    x = torch.stack([h.reshape(-1).double() for h in history])  # (T, D)
    a, b = x[:-lag], x[lag:]
    denom = float((a.square().sum() * b.square().sum()).sqrt())
    return float((a * b).sum()) / denom if denom > 0 else 0.0


def two_scale_excess(history: Sequence[torch.Tensor]) -> float:
    """``C(2) − C(1)²``: zero for one time scale, positive for a slow drift under fast changes."""
    return autocorrelation(history, 2) - autocorrelation(history, 1) ** 2


def co_correlation(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Windowed cosine ``Σ⟨a_t, b_t⟩ / √(Σ‖a_t‖² Σ‖b_t‖²)`` of two levels' updates (0 when silent)."""
    n = min(len(a), len(b))
    if n == 0:
        return 0.0
    x = torch.stack([t.reshape(-1).double() for t in a[-n:]])
    y = torch.stack([t.reshape(-1).double() for t in b[-n:]])
    denom = float((x.square().sum() * y.square().sum()).sqrt())
    return float((x * y).sum()) / denom if denom > 0 else 0.0


def _probes(core: HiveCore, path: str, d: int, seed: int, cache: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed ``G (d, out)`` and ``X (in, d)`` of one module (the same for every level)."""
    if path not in cache:
        layer = core.layers[path]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(path.encode()))
        g = torch.randn(d, layer.out_features, generator=gen) / layer.out_features**0.5
        x = torch.randn(layer.in_features, d, generator=gen) / layer.in_features**0.5
        cache[path] = (g.to(layer.weight.device), x.to(layer.weight.device))
    return cache[path]


@torch.no_grad()
def level_sketch(core: HiveCore, level: str, d: int, seed: int = 0, cache: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
    """``(S, Σ_m d²)``: ``mix·(a/r)·G_m·B[s]·A[s]·X_m`` of every slot s and module m, flattened."""
    cache = {} if cache is None else cache
    coeff = core.states[level].mix * core.stack.get(level).scale
    parts = []
    for path, bank in core.named_banks(level):
        g, x = _probes(core, path, d, seed, cache)
        gb = torch.einsum("do,sor->sdr", g, bank.B.float())  # (S, d, r)
        ax = torch.einsum("sri,ie->sre", bank.A.float(), x)  # (S, r, d)
        parts.append((gb @ ax).flatten(1))  # (S, d²)
    return coeff * torch.cat(parts, dim=1)


Moments = dict[str, tuple[torch.Tensor, list[int]]]  # parameter name -> (AdamW exp_avg, per-slot step counts), at draw


def level_moments(core: HiveCore, level: str) -> Moments:
    """The first moments and step counts of ``level``'s optimizer now (what :func:`carried_sketch` starts from)."""
    opt = core.optimizers[level]
    return {name: (opt.moment(name, "exp_avg").detach().clone(), list(opt.host_steps[name])) for name in opt.names()}


@torch.no_grad()
def carried_sketch(core: HiveCore, level: str, before: Moments, d: int, seed: int = 0, cache: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
    """Sketch (as :func:`level_sketch`) of what ``level``'s AdamW steps since ``before`` wrote out of the momentum held then.

    A slot that took k steps from step count s₀ (first moment m₀) moved by
    ``−η·m₀·Σ_{j=1..k} β1^j / (1 − β1^{s₀+j}) / (√v̂ + ε)`` on top of what its new gradients
    wrote (η: the level's step size, v̂: the second moment now, bias-corrected), mapped to ΔW to
    first order (``δB·A + B·δA``, the factors now). Slots that took no step, or whose moments were
    reset, carried nothing; nor did a parameter the optimizer had no state for at ``before``.
    """
    cache = {} if cache is None else cache
    opt = core.optimizers[level]
    (b1, b2), eps, lr = opt.betas, opt.eps, core.states[level].step_size
    coeff = core.states[level].mix * core.stack.get(level).scale
    parts = []
    factors: dict[tuple[tuple[int, ...], tuple[int, ...], torch.device], torch.Tensor] = {}  # step counts -> (carry, 1 − β2^s) per slot
    for path, bank in core.named_banks(level):
        g, x = _probes(core, path, d, seed, cache)
        delta = {}
        for key, p in (("A", bank.A), ("B", bank.B)):
            name = f"{path}.{key}"
            old = before.get(name)
            if name not in opt.host_steps or old is None or old[0].shape != p.shape:
                delta[key] = torch.zeros(p.shape, device=p.device)
                continue
            m0, then = old
            now = opt.host_steps[name]  # a count below the one at draw: the slot's moments were reset
            counts = (tuple(then), tuple(now), p.device)
            if counts not in factors:  # the parameters of a level mostly share their step counts
                carry = [sum(b1**j / (1 - b1 ** (s0 + j)) for j in range(1, s1 - s0 + 1)) if s1 >= s0 else 0.0 for s0, s1 in zip(then, now, strict=True)]
                corr2 = [1 - b2**s1 if s1 > 0 else 1.0 for s1 in now]
                factors[counts] = torch.tensor([carry, corr2], device=p.device)
            fac, corr2 = (f.view(-1, *[1] * (p.dim() - 1)) for f in factors[counts])
            v = opt.moment(name, "exp_avg_sq", p.device)
            delta[key] = -lr * fac * m0.to(p.device).float() / ((v.float() / corr2).sqrt() + eps)
        dw = torch.einsum("do,sor,sri,ie->sde", g, delta["B"], bank.A.float(), x) + torch.einsum("do,sor,sri,ie->sde", g, bank.B.float(), delta["A"], x)
        parts.append(dw.flatten(1))  # (S, d²)
    return coeff * torch.cat(parts, dim=1)


def _revive(b: torch.Tensor, a: torch.Tensor, a0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Patterns with (numerically) no weight get B = 0 and their init A row: alive, adding nothing."""
    col = b.square().sum(-2)  # (S, r)
    dead = col <= 1e-12 * col.amax(-1, keepdim=True).clamp_min(1e-30)  # (S, r)
    b = b.masked_fill(dead[:, None, :], 0.0)
    a = torch.where(dead[:, :, None], a0.to(a.dtype), a)
    return b, a


def _next_slower(core: HiveCore, level: str) -> LevelSpec | None:
    names = core.stack.names()
    slower = [lv for lv in core.levels[: names.index(level)] if lv.trainable]
    return slower[-1] if slower else None


@torch.no_grad()
def split_level(core: HiveCore, level: str, name: str, rank: int) -> dict[str, Any]:
    """Move the dominant rank-``rank`` part of every slot of ``level`` into a new level ``name`` just above it.

    Exact up to float rounding: ``B·A = B'·A'`` (SVD through QR of the factors), the new level
    takes the first ``rank`` singular pairs at the source's scale and mix, the source the rest.
    """
    src = core.stack.get(level)
    k = min(rank, src.rank - 1)
    if k < 1:
        raise ValueError(f"split of {level!r}: rank {src.rank} leaves nothing to split")
    nxt = _next_slower(core, level)
    inertia = (src.inertia + (nxt.inertia if nxt is not None else 1.0)) / 2
    spec = src.model_copy(update={
        "name": name, "rank": k, "alpha": src.scale * k, "scope": "agent" if src.scope == "task" else src.scope,
        "inertia": inertia, "mix": core.states[level].mix,
    })  # fmt: skip
    old: Factors = {}
    for path, bank in core.named_banks(level):
        new_b, new_a, _ = refactor(bank.B.float(), bank.A.float(), src.rank)  # (S, out, r), (S, r, in): singular pairs in order
        old[path] = (new_b, new_a)
    core.insert_level(spec, core.stack.names().index(level), core.origin.get(level, level))
    slow: Factors = {}
    for path, bank in core.named_banks(name):
        b, a = old[path]
        slow[path] = _revive(b[..., :k], a[:, :k], bank.A0)
    rest: Factors = {}
    for path, bank in core.named_banks(level):
        b, a = old[path]
        fresh = bank.A0[:, :k]  # freed pattern rows start again from init rows
        rest[path] = _revive(torch.cat([b[..., k:], torch.zeros_like(b[..., :k])], -1), torch.cat([a[:, k:], fresh.float()], 1), bank.A0)
    core.set_factors(name, slow)
    core.set_factors(level, rest)
    core.forget_moments(level, list(range(core.n_slots(level))))
    core.rescan()
    return {"level": level, "new": name, "rank": k, "scope": spec.scope, "inertia": inertia}


@torch.no_grad()
def merge_levels(core: HiveCore, keep: str, gone: str, grow: bool, max_rank: int) -> dict[str, Any]:
    """Fold level ``gone`` into ``keep`` (same scope and targets); ``grow``: ``keep`` takes both ranks (up to ``max_rank``).

    ``keep``'s new factors are the best rank-R factors of ``[B_k, c·B_g]·[A_k; A_g]``, with
    ``c`` the ratio of the two levels' mix × scale; with R = r_k + r_g nothing is dropped.
    Returns what was done, with the truncation error (Frobenius, ΔW space, all modules and slots).
    """
    ks, gs = core.stack.get(keep), core.stack.get(gone)
    mix_k = core.states[keep].mix
    c = core.states[gone].mix * gs.scale / (mix_k * ks.scale) if mix_k else 0.0
    rank = min(ks.rank + gs.rank, max_rank) if grow else ks.rank
    layers = dict(core.named_banks(gone))
    merged: Factors = {}
    err2 = 0.0
    for path, bank in core.named_banks(keep):
        other = layers[path]
        left = torch.cat([bank.B.float(), c * other.B.float()], -1)  # (S, out, r_k + r_g)
        right = torch.cat([bank.A.float(), other.A.float()], -2)  # (S, r_k + r_g, in)
        b, a, dropped = refactor(left, right, rank)
        merged[path] = (b, a)
        err2 += float(dropped.square().sum())
    if rank != ks.rank:
        index, origin = core.stack.names().index(keep), core.origin.get(keep)
        core.remove_level(keep)
        core.insert_level(ks.model_copy(update={"rank": rank, "alpha": ks.scale * rank, "mix": mix_k}), index, origin)
    core.remove_level(gone)
    merged = {p: _revive(*merged[p], bank.A0) for p, bank in core.named_banks(keep)}
    core.set_factors(keep, merged)
    core.forget_moments(keep, list(range(core.n_slots(keep))))
    core.rescan()
    return {"keep": keep, "gone": gone, "rank": rank, "truncation": ks.scale * mix_k * err2**0.5}


@final
class Topology:
    """Splits levels with two time scales and merges redundant neighbours (``draw``, ``apply``)."""

    name = "topology"
    phases: tuple[str, ...] = ("draw", "apply")

    def __init__(self, cfg: TopologyConfig, levels: Sequence[str] | None, seed: int = 0) -> None:
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.roots = None if levels is None else list(levels)  # configured levels that may split; None: every trainable one
        self.seed = seed
        self.history: dict[str, list[torch.Tensor]] = {}  # level -> its last ``window`` update sketches
        self.streak: dict[str, int] = {}  # "level" (split) or "slower>faster" (merge) -> ticks the signal held
        self.grown = 0  # levels grown so far (names the next)
        self.quiet_until = 0  # no change before this tick
        self._before: dict[str, torch.Tensor] = {}
        self._moments: dict[str, Moments] = {}  # level -> its optimizer's first moments at draw
        self._probes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def watched(self, core: HiveCore) -> list[str]:
        roots = self.roots if self.roots is not None else [lv.name for lv in core.levels if lv.trainable and lv.name not in core.origin]
        return [lv.name for lv in core.levels if lv.trainable and (lv.name in roots or core.origin.get(lv.name) in roots)]

    def _sketch(self, core: HiveCore, level: str) -> torch.Tensor:
        return level_sketch(core, level, self.cfg.sketch, self.seed, self._probes)

    def run(self, view: TickView) -> Action | None:
        core = view.core
        if view.phase == "draw":
            kept = [lv for lv in self.watched(core) if core.stack.get(lv).scope != "task"]
            self._before = {lv: self._sketch(core, lv) for lv in kept}
            self._moments = {lv: level_moments(core, lv) for lv in kept}
            return None
        signals = self._observe(core)
        change = self._change(view.tick, core, signals) if view.tick >= self.quiet_until else None
        return Action(change[0] if change else "watch", {"levels": signals, **(change[1] if change else {})})

    def _observe(self, core: HiveCore) -> dict[str, dict[str, float]]:
        """Fold this tick's update of every watched level into its history; each level's C(1), C(2), excess."""
        out: dict[str, dict[str, float]] = {}
        for lv in self.watched(core):
            now = self._sketch(core, lv)
            before = self._before.get(lv)
            if before is None or before.shape != now.shape:
                update = now
            else:  # what this tick wrote, less what the optimizer's momentum from earlier ticks carried into it
                update = now - before - carried_sketch(core, lv, self._moments.get(lv, {}), self.cfg.sketch, self.seed, self._probes)
            hist = self.history.setdefault(lv, [])
            hist.append(update.detach().cpu())
            del hist[: -self.cfg.window]
            c1, c2 = autocorrelation(hist, 1), autocorrelation(hist, 2)
            out[lv] = {"c1": c1, "c2": c2, "excess": c2 - c1 * c1, "ticks": len(hist)}
        self._before, self._moments = {}, {}
        return out

    def _held(self, key: str, on: bool) -> bool:
        self.streak[key] = self.streak.get(key, 0) + 1 if on else 0
        return self.streak[key] >= self.cfg.checks

    def _change(self, tick: int, core: HiveCore, signals: dict[str, dict[str, float]]) -> tuple[str, dict[str, Any]] | None:
        full = {lv for lv, s in signals.items() if s["ticks"] >= self.cfg.window}
        merge = self._merge_candidate(core, full)
        splits = [lv for lv in sorted(full, key=lambda lv: -signals[lv]["excess"]) if self._held(lv, signals[lv]["excess"] >= self.cfg.split_excess)]
        splits = [lv for lv in splits if core.stack.get(lv).rank >= 2 and len(core.levels) < self.cfg.max_levels]
        if merge is not None:
            keep, gone, grow, cos = merge
            done = merge_levels(core, keep, gone, grow, self.cfg.max_rank)
            self._forget(keep, gone)
            return self._changed(tick, "merge", {**done, "cosine": cos})
        if splits:
            level = splits[0]
            self.grown += 1
            name = f"{core.origin.get(level, level)}_g{self.grown}"
            rank = self.cfg.split_rank or max(1, core.stack.get(level).rank // 2)
            done = split_level(core, level, name, rank)
            self._forget(level, name)
            return self._changed(tick, "split", {**done, "excess": signals[level]["excess"]})
        return None

    def _merge_candidate(self, core: HiveCore, full: set[str]) -> tuple[str, str, bool, float] | None:
        """The first neighbour pair whose merge signal held (``keep``, ``gone``, ``keep`` grows, cosine)."""
        levels = core.levels
        held = []
        for slower, faster in zip(levels, levels[1:], strict=False):
            if slower.name not in full or faster.name not in full or (slower.scope, slower.targets, slower.blocks) != (faster.scope, faster.targets, faster.blocks):
                continue
            if slower.name not in core.origin and faster.name not in core.origin:
                continue  # configured levels are never removed
            cos = co_correlation(self.history[slower.name], self.history[faster.name])
            if self._held(f"{slower.name}>{faster.name}", cos >= self.cfg.merge_threshold):
                keep, gone = (slower.name, faster.name) if faster.name in core.origin else (faster.name, slower.name)
                held.append((keep, gone, keep in core.origin, cos))
        return held[0] if held else None

    def _forget(self, *levels: str) -> None:
        """The levels a change rewrote start their histories and signals over."""
        for lv in levels:
            self.history.pop(lv, None)
        self.streak = {k: v for k, v in self.streak.items() if not any(lv in k.split(">") for lv in levels)}

    def _changed(self, tick: int, kind: str, detail: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self.quiet_until = tick + 1 + self.cfg.cooldown
        return kind, detail

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"streak": dict(self.streak), "grown": self.grown, "quiet_until": self.quiet_until}
        out["history"] = {lv: len(h) for lv, h in self.history.items()}
        out.update({f"hist.{lv}.{i}": t for lv, h in self.history.items() for i, t in enumerate(h)})
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.streak = {str(k): int(v) for k, v in state.get("streak", {}).items()}
        self.grown = int(state.get("grown", 0))
        self.quiet_until = int(state.get("quiet_until", 0))
        self.history = {lv: [state[f"hist.{lv}.{i}"].float() for i in range(int(n))] for lv, n in state.get("history", {}).items()}
