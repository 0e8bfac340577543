"""Consolidation (seed 004 §3, "reflection"; DESIGN.md §3): stable patterns are recognised and sent to slower levels.

Every ``every`` ticks (``detect`` phase) each written slot of a channel's source level gets a
*signature*: per module, the dominant ``k``-dimensional left singular subspace of its term
``ΔW = (a/r)·B·A``, found through thin QRs of the factors and an SVD of the small r×r core
(:func:`dominant`; never an SVD of an out×in matrix). Its *autocorrelation* is the overlap
with the previous check's signature,

    autocorr = Σ_m w_m · ‖U_m,prevᵀ U_m,now‖²_F / k  /  Σ_m w_m,     w_m = Σ_i σ_m,i²  (this check),

1 when the dominant directions stayed put, ≈ k/out for unrelated ones. Above ``threshold``
for ``checks`` checks in a row the slot's dominant part is *ready*: it is handed to the
bandwidth queues (:mod:`lorahive.mechanisms.bandwidth`) through ``view.shared["ready"]``,
which move it to the channel's target level within their budget. After a slot's pattern has
migrated, its count and signature start over. With ``trigger: timer`` (the control of seed
004's experiment 6) every check that has a previous signature counts, whatever the
autocorrelation: a slot is ready ``checks`` checks after its first, stable or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, final

import torch

from lorahive.config import ConsolidationConfig
from lorahive.mechanisms.base import Action, TickView
from lorahive.mechanisms.peers import gather_rows, held

__all__ = ["NONE", "Consolidation", "Pattern", "Ready", "dominant", "overlap", "spread"]


@dataclass(frozen=True)
class Pattern:
    """The dominant rank-k part of slots' ΔW, per module: ``ΔW ≈ U·diag(S)·V`` (S includes the level's scale)."""

    U: dict[str, torch.Tensor]  # path -> (n, out, k), orthonormal columns
    S: dict[str, torch.Tensor]  # path -> (n, k)
    V: dict[str, torch.Tensor]  # path -> (n, k, in), orthonormal rows

    def energy(self) -> torch.Tensor:
        """``Σ_m Σ_i σ²`` per slot ``(n,)``: the squared Frobenius norm of the part."""
        return torch.stack([s.square().sum(1) for s in self.S.values()]).sum(0)


@dataclass(frozen=True)
class Ready:
    """A slot's pattern found stable: what the bandwidth queue of its channel is handed."""

    source: str
    target: str
    slot: int
    autocorr: float
    tick: int


def by_shape(core: Any, level: str) -> dict[tuple[int, int], list[tuple[str, Any]]]:
    """``level``'s banks grouped by module shape (out, in): a model has a handful, each repeated per layer."""
    groups: dict[tuple[int, int], list[tuple[str, Any]]] = {}
    for path, bank in core.named_banks(level):
        groups.setdefault((bank.out_features, bank.in_features), []).append((path, bank))
    return groups


@torch.no_grad()
def dominant(core: Any, level: str, slots: Sequence[int], k: int) -> Pattern:
    """The top-``k`` singular part of ``slots`` of ``level`` in every module.

    Batched over slots and over the modules of one shape: a few QR and SVD calls per shape
    instead of a few per module (the decompositions are small; their launches are not).
    """
    scale = core.stack.get(level).scale
    idx = core.index(list(slots))
    n = len(slots)
    U, S, V = {}, {}, {}
    for group in by_shape(core, level).values():
        b = torch.stack([bank.B.index_select(0, idx) for _, bank in group]).float().flatten(0, 1)  # (m·n, out, r)
        a = torch.stack([bank.A.index_select(0, idx) for _, bank in group]).float().flatten(0, 1)  # (m·n, r, in)
        qb, rb = torch.linalg.qr(b)  # (m·n, out, r), (m·n, r, r)
        qa, ra = torch.linalg.qr(a.transpose(1, 2))  # (m·n, in, r), (m·n, r, r)
        u, s, vh = torch.linalg.svd(rb @ ra.transpose(1, 2))  # (m·n, r, r) ×3
        kk = min(k, s.shape[1])
        us = (qb @ u[..., :kk]).unflatten(0, (len(group), n))
        ss = (s[:, :kk] * scale).unflatten(0, (len(group), n))
        vs = (vh[:, :kk] @ qa.transpose(1, 2)).unflatten(0, (len(group), n))
        for j, (path, _) in enumerate(group):
            U[path], S[path], V[path] = us[j], ss[j], vs[j]
    return Pattern(U, S, V)


#: No slot: the pattern of an empty list of slots.
NONE = Pattern({}, {}, {})


def spread(view: TickView, level: str, slots: Sequence[int], pat: Pattern, parts: str = "USV") -> tuple[list[int], Pattern]:
    """``pat`` of this process's ``slots`` → the pattern of every process's, in slot order; only the factors in ``parts`` travel.

    A shared level's slot is held everywhere, so its pattern is returned as it is.
    """
    rows = {(f, p): t for f in parts for p, t in getattr(pat, f).items()}
    every, got = gather_rows(view.peers, view.core, level, slots, rows)
    return every, Pattern(*({p: t for (g, p), t in got.items() if g == f} for f in "USV"))


def overlap(prev: dict[str, torch.Tensor], now: Pattern) -> torch.Tensor:
    """Energy-weighted mean subspace overlap per slot ``(n,)`` between two signatures (in [0, 1])."""
    num, den = [], []
    for path, u in now.U.items():
        w = now.S[path].square().sum(1)  # (n,)
        p = prev[path].to(u.device)
        o = (p.transpose(1, 2) @ u).square().sum((1, 2)) / u.shape[2]
        num.append(w * o)
        den.append(w)
    return torch.stack(num).sum(0) / torch.stack(den).sum(0).clamp_min(1e-30)


@final
class Consolidation:
    """Signatures and autocorrelation per source slot; ready patterns go to the bandwidth queues."""

    name = "consolidation"
    phases: tuple[str, ...] = ("detect",)

    def __init__(self, cfg: ConsolidationConfig, channels: Sequence[tuple[str, str]]) -> None:
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.channels = list(channels)
        self.signatures: dict[str, dict[int, dict[str, torch.Tensor]]] = {}  # source -> slot -> path -> (out, k)
        self.stable: dict[str, dict[int, int]] = {}  # source -> slot -> consecutive stable checks

    def forget(self, level: str, slots: Sequence[int]) -> None:
        """Start ``slots`` of ``level`` over (their pattern has migrated, or they were reset)."""
        for s in slots:
            self.signatures.get(level, {}).pop(s, None)
            self.stable.get(level, {}).pop(s, None)

    def run(self, view: TickView) -> Action | None:
        if view.tick % self.cfg.every:
            return None
        core = view.core
        ready: list[Ready] = view.shared.setdefault("ready", [])
        report: dict[str, Any] = {}
        for src, dst in self.channels:
            mine = held(view.peers, core, src, sorted(core.written[src]))
            own = dominant(core, src, mine, self.cfg.signature_rank) if mine else NONE
            slots, pat = spread(view, src, mine, own, "US")  # every written slot's signature, wherever it is held
            if not slots:
                continue
            big = (pat.energy().sqrt() >= self.cfg.min_norm).tolist()
            sigs = self.signatures.setdefault(src, {})
            stable = self.stable.setdefault(src, {})
            have = [i for i, s in enumerate(slots) if s in sigs and big[i]]
            auto: dict[int, float] = {}
            if have:
                sub = core.index(have)
                prev = {p: torch.stack([sigs[slots[i]][p] for i in have]) for p in pat.U}
                now = Pattern({p: u.index_select(0, sub) for p, u in pat.U.items()}, {p: s.index_select(0, sub) for p, s in pat.S.items()}, {})
                auto = dict(zip([slots[i] for i in have], overlap(prev, now).tolist(), strict=True))
            for i, s in enumerate(slots):
                if not big[i]:
                    self.forget(src, [s])
                    continue
                a = auto.get(s)
                counts = a is not None and (self.cfg.trigger == "timer" or a > self.cfg.threshold)
                stable[s] = stable.get(s, 0) + 1 if counts else 0
                sigs[s] = {p: u[i].detach().clone() for p, u in pat.U.items()}
                if a is not None and stable[s] >= self.cfg.checks:
                    ready.append(Ready(src, dst, s, a, view.tick))
            report[f"{src}→{dst}"] = {
                "checked": len(slots),
                "autocorr": {str(s): round(a, 4) for s, a in auto.items()},
                "ready": sum(r.source == src for r in ready),
            }
        return Action("detect", {"channels": report}) if report else None

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stable": {lv: {str(s): n for s, n in d.items()} for lv, d in self.stable.items()}}
        for lv, by_slot in self.signatures.items():
            for s, paths in by_slot.items():
                for p, u in paths.items():
                    out[f"sig/{lv}/{s}/{p}"] = u
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stable = {lv: {int(s): int(n) for s, n in d.items()} for lv, d in state.get("stable", {}).items()}
        self.signatures = {}
        for key, u in state.items():
            if key.startswith("sig/"):
                _, lv, s, p = key.split("/", 3)
                self.signatures.setdefault(lv, {}).setdefault(int(s), {})[p] = u
