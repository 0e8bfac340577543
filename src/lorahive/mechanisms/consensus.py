"""The consensus detector (seed 004 §5; DESIGN.md §3): what many agents learn alike belongs to the swarm.

In the ``detect`` phase of a tick, the agents' swarm proposals of the tick are compared by
angle: ``cos(i, j)`` of the flattened gradients (a Gram matrix summed tensor by tensor, no
flattening). Agent ``i``'s neighbours are the agents with ``cos ≥ threshold`` (itself
included); the agent with the most neighbours (the first on a tie) and its neighbours are
the dominant cluster ``C``. When ``|C| ≥ max(min_agents, fraction × proposers)``:

    M = (1/|C|) Σ_{i∈C} P_i          P_i: member i's dominant rank-``rank`` part of its per-agent slot
    swarm   ← swarm + (mix_agent / mix_swarm) · M
    slot_i  ← slot_i − M              for every i ∈ C

both re-factored to their level's rank (``HiveCore.add_deltas``; the truncation errors are in
the ledger). A member's view changes by the truncation only — the swarm gained what its slot
lost — and every other agent gains ``M``. A consensus held ``hold`` ticks in a row hands the
swarm slot to the bandwidth queue of the swarm → next-slower channel (a ready pattern whose
priority is the cluster's mean cosine, in place of consolidation's autocorrelation), and the
count starts over.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, final

import torch

from lorahive.config import ConsensusConfig
from lorahive.mechanisms.base import Action, TickView
from lorahive.mechanisms.consolidation import NONE, Ready, dominant, spread
from lorahive.mechanisms.peers import held

__all__ = ["Consensus", "dominant_cluster", "proposal_cosines"]


@torch.no_grad()
def proposal_cosines(proposals: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """``(K, K)`` cosines between the proposals (each a dict of tensors with the same keys)."""
    gram = torch.zeros(len(proposals), len(proposals))
    for k in sorted(proposals[0]):
        rows = torch.stack([prop[k].detach().float().reshape(-1) for prop in proposals])  # (K, n)
        gram = gram.to(rows.device) + rows @ rows.T
    norm = gram.diagonal().clamp_min(1e-30).sqrt()
    return gram / (norm[:, None] * norm[None, :])


def dominant_cluster(cos: torch.Tensor, threshold: float) -> list[int]:
    """Indices of the largest neighbourhood ``{j : cos(i, j) ≥ threshold}`` over ``i`` (the first on a tie)."""
    near = (cos >= threshold).tolist()
    best = max(range(len(near)), key=lambda i: (sum(near[i]), -i))
    return [j for j, ok in enumerate(near[best]) if ok or j == best]


@final
class Consensus:
    """Moves the dominant cluster's common pattern from its members' slots to the swarm (``detect``)."""

    name = "consensus"
    phases: tuple[str, ...] = ("detect",)

    def __init__(self, cfg: ConsensusConfig, source: str, target: str, slower: str | None) -> None:
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.source, self.target, self.slower = source, target, slower
        self.held = 0  # consecutive ticks with a consensus

    def run(self, view: TickView) -> Action | None:
        props = [p for p in view.proposals if p.level == self.target]
        if len(props) < self.cfg.min_agents:
            self.held = 0
            return None
        cos = proposal_cosines([p.delta for p in props])
        cluster = dominant_cluster(cos, self.cfg.threshold)
        members = sorted({props[i].agent for i in cluster})
        needed = max(self.cfg.min_agents, self.cfg.fraction * len(props))
        if len(members) < needed:
            self.held = 0
            return Action("consensus", {"found": False, "cluster": members, "proposers": len(props)})
        moved = self._move(view, members)
        self.held += 1
        handed = False
        if self.held >= self.cfg.hold and self.slower is not None:
            agreement = float(cos[cluster][:, cluster].mean())  # the queue's priority: how strongly they agree
            view.shared.setdefault("ready", []).append(Ready(self.target, self.slower, 0, agreement, view.tick))
            handed, self.held = True, 0
        return Action("consensus", {"found": True, "cluster": members, "proposers": len(props), "to_slower": handed, **moved})

    def _move(self, view: TickView, members: list[str]) -> dict[str, Any]:
        """The members' patterns come from the processes holding their slots; each edits its own members' slots."""
        core = view.core
        slots = sorted(core.slot_of(self.source, a) for a in members)
        mine = held(view.peers, core, self.source, [s for s in slots if s in core.written[self.source]])
        own = dominant(core, self.source, mine, self.cfg.rank) if mine else NONE
        written, pat = spread(view, self.source, mine, own)
        if not written:
            return {"truncation": {}, "norm": 0.0}
        n = len(written)
        mix_dst = view.states[self.target].mix
        factor = view.states[self.source].mix / mix_dst if mix_dst else 0.0
        mean = {p: (torch.cat([pat.U[p][i] * pat.S[p][i] / n for i in range(n)], 1), torch.cat([pat.V[p][i] for i in range(n)], 0)) for p in pat.U}
        err_dst = core.add_delta(self.target, 0, {p: (factor * u, v) for p, (u, v) in mean.items()})
        here = core.add_deltas(self.source, mine, [{p: (-u, v) for p, (u, v) in mean.items()}] * len(mine))
        errs_of = {s: e for part in view.peers.gather(dict(zip(mine, here, strict=True))) for s, e in part.items()}
        errs = [errs_of[s] for s in written]
        core.forget_moments(self.source, mine)
        core.forget_moments(self.target, [0])
        rewritten = view.shared.setdefault("rewritten", {})
        rewritten.setdefault(self.source, set()).update(written)
        rewritten.setdefault(self.target, set()).add(0)
        energy = torch.stack([((u.T @ u) * (v @ v.T)).sum() for u, v in mean.values()]).sum()  # ‖U·V‖² = tr(UᵀU·VVᵀ)
        agent_of = {core.slot_of(self.source, a): a for a in members}
        return {"truncation": {self.target: err_dst, **{agent_of[s]: e for s, e in zip(written, errs, strict=True)}}, "norm": float(energy.clamp_min(0).sqrt())}

    def state_dict(self) -> dict[str, Any]:
        return {"held": self.held}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.held = int(state.get("held", 0))
