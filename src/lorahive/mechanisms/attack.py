"""Malicious agents, for testing defences: a ``solve``-phase mechanism that poisons proposals.

What it does is set by :class:`~lorahive.config.AttackConfig` (the ``attack`` section of a run).

A fraction of the agents, chosen from the run's seed alone, replace their swarm-level
proposal with a poisoned one before aggregation sees it (the threat model of Byzantine-robust
federated learning: Blanchard et al. 2017, Yin et al. 2018, Bagdasaryan et al. 2020):

    sign_flip   −scale · g                     (g: the attacker's own honest gradient)
    noise       Gaussian, per-coordinate std scale · rms(g)
    nan         every value NaN
    inf         every value +inf
    backdoor    scale · ‖g‖ · d for one fixed unit direction d, the same for every attacker
                and every tick (a coordinated, targeted push)

An attacker always submits (using the first honest proposal as its reference when it did not
clear the quality bar itself) and always claims quality 1. Every draw depends only on
(seed, tick, agent), so an attacked run is as reproducible as a clean one. Each tick with
proposals, its :class:`~lorahive.mechanisms.base.Action` names the attackers, the kind and the
scale; the framework records it as a ``mechanism:attack`` event in the ledger.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, final

import torch

from lorahive.config import AttackConfig, AttackKind
from lorahive.mechanisms.aggregation import global_norm
from lorahive.mechanisms.base import Action, Delta, Proposal, TickView

__all__ = ["Attack", "build_attack", "choose_attackers", "poison"]


def choose_attackers(agents: Sequence[str], fraction: float, seed: int) -> list[str]:
    """``round(fraction · n)`` agents, drawn from ``seed`` alone, in the agents' order."""
    k = math.floor(fraction * len(agents) + 0.5)
    picked = set(random.Random(f"{seed}/attackers").sample(sorted(agents), k))
    return [a for a in agents if a in picked]


def _direction(ref: Delta, seed: int) -> Delta:
    """A unit-norm direction shaped like ``ref``, fixed by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    d = {k: torch.randn(ref[k].shape, generator=gen) for k in sorted(ref)}
    n = global_norm(d)
    return {k: v / n for k, v in d.items()}


def poison(own: Delta, kind: AttackKind, scale: float, seed: int, tick: int, agent: str) -> Delta:
    """The poisoned version of an honest delta ``own`` (see the module docstring)."""
    if kind == "sign_flip":
        return {k: -scale * v for k, v in own.items()}
    if kind == "nan":
        return {k: torch.full_like(v, float("nan")) for k, v in own.items()}
    if kind == "inf":
        return {k: torch.full_like(v, float("inf")) for k, v in own.items()}
    norm = global_norm(own)
    if kind == "backdoor":
        return {k: scale * norm * v.to(own[k].device, own[k].dtype) for k, v in _direction(own, seed).items()}
    gen = torch.Generator().manual_seed(random.Random(f"{seed}/{tick}/{agent}/noise").randrange(2**63))
    rms = norm / math.sqrt(max(1, sum(v.numel() for v in own.values())))
    return {k: torch.randn(v.shape, generator=gen).to(v.device, v.dtype) * (scale * rms) for k, v in sorted(own.items())}


@final
class Attack:
    """The ``solve``-phase mechanism: swaps the attackers' proposals for poisoned ones."""

    name: str = "attack"
    phases: tuple[str, ...] = ("solve",)

    def __init__(self, cfg: AttackConfig, attackers: Sequence[str], seed: int, enabled: bool = True) -> None:
        self.cfg, self.attackers, self.seed, self.enabled = cfg, list(attackers), seed, enabled

    def run(self, view: TickView) -> Action | None:
        if not view.proposals:
            return None
        own = {p.agent: p for p in view.proposals}
        ref = next((p for p in view.proposals if p.agent not in self.attackers), view.proposals[0])
        out = []
        for name, reputation in view.reputations.items():
            if name in self.attackers:
                base = own.get(name, ref)
                delta = poison(base.delta, self.cfg.kind, self.cfg.scale, self.seed, view.tick, name)
                out.append(Proposal(name, base.level, view.tick, delta, 1.0, reputation))
            elif name in own:
                out.append(own[name])
        view.proposals[:] = out
        return Action("poisoned", {"attackers": list(self.attackers), "kind": self.cfg.kind, "scale": self.cfg.scale})

    def state_dict(self) -> dict[str, Any]:
        return {}  # the attackers and every draw follow from the seed

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def build_attack(cfg: AttackConfig, agents: Sequence[str], seed: int) -> Attack | None:
    """The attack ``cfg`` describes, or ``None`` when ``cfg.fraction`` names no attacker."""
    attackers = choose_attackers(list(agents), cfg.fraction, seed)
    return Attack(cfg, attackers, seed) if attackers else None
