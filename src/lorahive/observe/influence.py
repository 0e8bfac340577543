"""Who shaped the behaviour: the influence of each level, and of each agent on a shared level.

DESIGN.md §4. Per level, the *exact* Shapley value of every level on the log-probability of
the answer: the game's value of a coalition S of levels is the answer log-probability with
only S switched on (levels outside the game stay on), and all 2^n coalitions of every
example are run as rows of a few batches, each row gating its levels 0/1 through the
routing context. Beside it, the KL divergence of the answer-position next-token
distributions when one level is dropped.

Per agent, :class:`SwarmAttribution` keeps how much of a shared level's accumulated change
traces back to each agent's accepted proposals, decayed as the level decayed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from lorahive.core import HiveCore
from lorahive.learning.batching import IGNORE, Batch, pack_examples
from lorahive.learning.objective import hidden_states

__all__ = [
    "LevelInfluence",
    "SwarmAttribution",
    "level_influence",
    "player_influence",
    "projection_contributions",
    "shapley_matrix",
    "subset_masks",
]


# ---------------------------------------------------------------------- Shapley algebra
def subset_masks(n: int) -> torch.Tensor:
    """All 2^n coalitions as a (2^n, n) bool matrix; row m holds the bits of m (level i = bit i)."""
    m = torch.arange(2**n).unsqueeze(1)  # (2^n, 1)
    return (m >> torch.arange(n)) & 1 == 1  # (2^n, n)


def shapley_matrix(n: int) -> torch.Tensor:
    """W (2^n, n) float64 with φ = v @ W for coalition values v (…, 2^n).

    φ_i = Σ_{S ∌ i} |S|!(n−|S|−1)!/n! · (v(S ∪ {i}) − v(S)): a coalition m holding i enters
    with +w(|m|−1), one without i with −w(|m|), where w(s) = s!(n−s−1)!/n!.
    """
    masks = subset_masks(n)  # (2^n, n)
    size = masks.sum(1)  # (2^n,)
    w = [math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)] + [0.0]
    weight = torch.tensor(w, dtype=torch.float64)
    plus = weight[(size - 1).clamp(min=0)].unsqueeze(1).expand(-1, n)  # (2^n, n)
    minus = weight[size].unsqueeze(1).expand(-1, n)  # (2^n, n)
    return torch.where(masks, plus, -minus)


# ---------------------------------------------------------------------- level influence
@dataclass(frozen=True)
class LevelInfluence:
    """Influence of each level on a set of (prompt, answer) examples, in nats.

    shapley: level -> mean over examples of its Shapley value on the answer log-probability
        (summed over answer tokens); they add up to ``full − base``.
    kl: level -> mean over answer positions of KL(p_full ‖ p_without_level).
    full / base: mean answer log-probability with every level of the game on / off.
    per_example: (E, n) float64 Shapley values, columns in ``levels`` order.
    """

    levels: tuple[str, ...]
    shapley: dict[str, float]
    kl: dict[str, float]
    full: float
    base: float
    per_example: torch.Tensor

    def shares(self) -> dict[str, float]:
        """Each level's Shapley value over the sum of their absolute values (0 when all are 0)."""
        total = sum(abs(v) for v in self.shapley.values())
        return {k: (v / total if total > 0 else 0.0) for k, v in self.shapley.items()}


def _rows(batch: Batch, idx: torch.Tensor) -> Batch:
    labels = None if batch.labels is None else batch.labels[idx]
    return Batch(batch.input_ids[idx], batch.attention_mask[idx], batch.position_ids[idx], labels)


def _answer_logprobs(core: HiveCore, batch: Batch, agents: list[str], gates: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Per-row answer log-probability (R,), answer-position log-distributions (N, V), tokens per row."""
    assert batch.labels is not None
    with torch.no_grad(), core.routing.use(core.route(agents, gates=gates)):
        h = hidden_states(core.model, batch)  # (R, T, H)
        target = batch.labels[:, 1:]  # (R, T-1)
        keep = target != IGNORE
        head = cast(nn.Module, core.model.get_output_embeddings())
        logp = F.log_softmax(head(h[:, :-1][keep]).float(), dim=-1)  # (N, V)
    tok = logp.gather(1, target[keep].unsqueeze(1)).squeeze(1)  # (N,)
    rows = keep.nonzero()[:, 0]  # (N,)
    row_logp = torch.zeros(batch.input_ids.shape[0], device=tok.device, dtype=torch.float64)
    row_logp.index_add_(0, rows, tok.double())
    return row_logp, logp, keep.sum(1).tolist()


Players = Sequence[Sequence[str]]  # player i switches the levels players[i] together


def _run(core: HiveCore, batch: Batch, agents: Sequence[str], pairs: list[tuple[int, int]], masks: torch.Tensor, players: Players) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Run rows given as (example, coalition) pairs; returns what :func:`_answer_logprobs` does."""
    dev = core.device
    ex = torch.tensor([e for e, _ in pairs], device=dev)  # (R,)
    on = masks[torch.tensor([m for _, m in pairs])].to(dev, torch.float32)  # (R, n)
    gates = {lv: on[:, i] for i, group in enumerate(players) for lv in group}
    return _answer_logprobs(core, _rows(batch, ex), [agents[e] for e, _ in pairs], gates)


def _probe_pass(core: HiveCore, batch: Batch, agents: Sequence[str], masks: torch.Tensor, players: Players, max_rows: int) -> tuple[dict[tuple[int, int], float], torch.Tensor, int]:
    """Full and drop-one coalitions of every example: their values and the summed KL per player."""
    n, n_ex = len(players), len(agents)
    full = 2**n - 1
    probes = [full] + [full ^ (1 << i) for i in range(n)]
    per_chunk = max(1, max_rows // len(probes))
    values: dict[tuple[int, int], float] = {}
    kl_sum, positions = torch.zeros(n, dtype=torch.float64), 0
    for start in range(0, n_ex, per_chunk):
        pairs = [(e, m) for e in range(start, min(n_ex, start + per_chunk)) for m in probes]
        row_logp, logp, counts = _run(core, batch, agents, pairs, masks, players)
        values.update(zip(pairs, row_logp.tolist(), strict=True))
        parts = torch.split(logp, counts)  # one (a_e, V) per row
        for k in range(0, len(pairs), len(probes)):
            ref = parts[k]
            positions += ref.shape[0]
            for i in range(n):
                kl = F.kl_div(parts[k + 1 + i], ref, log_target=True, reduction="sum")
                kl_sum[i] += float(kl)
    return values, kl_sum, positions


@torch.no_grad()
def level_influence(
    core: HiveCore,
    examples: Sequence[tuple[str, str]],
    agents: Sequence[str],
    levels: Sequence[str] | None = None,
    max_rows: int = 64,
) -> LevelInfluence:
    """Exact Shapley values and drop-one KL of ``levels`` (default: all) on the answers.

    Example i is routed to ``agents[i]``. Every (example, coalition) pair is one batch row
    with gate 1 for the coalition's levels and 0 for the other levels of the game; at most
    ``max_rows`` rows run at once. Costs E·2^n row forwards, so keep n small (≤ ~8).
    """
    levels = list(core.stack.names() if levels is None else levels)
    return player_influence(core, examples, agents, {lv: [lv] for lv in levels}, max_rows)


@torch.no_grad()
def player_influence(
    core: HiveCore,
    examples: Sequence[tuple[str, str]],
    agents: Sequence[str],
    players: Mapping[str, Sequence[str]],
    max_rows: int = 64,
) -> LevelInfluence:
    """:func:`level_influence` where a player is a group of levels switched on and off together.

    ``players`` maps each player's name to its levels (distinct across players): a training
    stage that wrote several levels is one player (runtime/stages.py). The result's
    ``levels`` are the players' names.
    """
    names = list(players)
    groups = [list(players[p]) for p in names]
    flat = [lv for g in groups for lv in g]
    if not names or any(not g for g in groups):
        raise ValueError(f"players must be a non-empty mapping of names to non-empty level lists, got {dict(players)}")
    _check(core, examples, agents, flat, max_rows)
    n, n_ex = len(names), len(examples)
    masks = subset_masks(n)
    batch = pack_examples(core.tokenizer, [(str(p), str(a)) for p, a in examples], core.max_length).to(core.device)
    known, kl_sum, positions = _probe_pass(core, batch, agents, masks, groups, max_rows)
    values = torch.zeros(n_ex, 2**n, dtype=torch.float64)  # (E, 2^n) coalition values
    for (e, m), v in known.items():
        values[e, m] = v
    todo = [(e, m) for e in range(n_ex) for m in range(2**n) if (e, m) not in known]
    for start in range(0, len(todo), max_rows):
        pairs = todo[start : start + max_rows]
        row_logp = _run(core, batch, agents, pairs, masks, groups)[0].cpu()
        for (e, m), v in zip(pairs, row_logp.tolist(), strict=True):
            values[e, m] = v
    phi = values @ shapley_matrix(n)  # (E, n)
    return LevelInfluence(
        levels=tuple(names),
        shapley={p: float(phi[:, i].mean()) for i, p in enumerate(names)},
        kl={p: float(kl_sum[i]) / positions for i, p in enumerate(names)},
        full=float(values[:, -1].mean()),
        base=float(values[:, 0].mean()),
        per_example=phi,
    )


def _check(core: HiveCore, examples: Sequence[tuple[str, str]], agents: Sequence[str], levels: list[str], max_rows: int) -> None:
    if not examples:
        raise ValueError("examples is empty")
    if len(examples) != len(agents):
        raise ValueError(f"got {len(examples)} examples but {len(agents)} agents; give one agent per example")
    if not levels or len(set(levels)) != len(levels):
        raise ValueError(f"levels must be a non-empty list of distinct level names, got {levels}")
    core.route(list(agents), levels)  # raises on unknown agents or levels
    if max_rows < 1:
        raise ValueError(f"max_rows must be ≥ 1, got {max_rows}")


# ---------------------------------------------------------------------- agent attribution
def projection_contributions(updates: Mapping[str, torch.Tensor], weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Each source's component along the applied update U = Σ_a w_a·u_a, in norm units.

    c_a = ⟨w_a·u_a, U⟩ / ‖U‖, so Σ_a c_a = ‖U‖; an update opposed to the net change gets a
    negative contribution. Feed the result to :meth:`SwarmAttribution.tick`.
    """
    if not updates:
        return {}
    w = {a: 1.0 if weights is None else float(weights[a]) for a in updates}
    flat = {a: u.detach().double().flatten() * w[a] for a, u in updates.items()}
    total = torch.stack(list(flat.values())).sum(0)  # (D,)
    norm = float(total.norm())
    if not math.isfinite(norm):
        raise ValueError("updates hold NaN or inf")
    if norm == 0.0:
        return {a: 0.0 for a in updates}
    return {a: float(v @ total) / norm for a, v in flat.items()}


class SwarmAttribution:
    """Each source's decayed share of a shared level's accumulated change ΔW.

    Every tick the level's change decays by a factor γ (decay toward the init snapshot,
    migration out of the level) and the accepted proposals add to it. Each source (an agent,
    or a training stage) holds a mass that follows the same rule, m_a ← γ·m_a + c_a, with
    c_a its contribution to this tick's update (weight × update norm, or
    :func:`projection_contributions`); its share is m_a / Σ_b m_b. With a uniform γ the
    masses add up to the norm of the accumulated change when contributions are aligned.
    """

    def __init__(self) -> None:
        self._mass: dict[str, float] = {}

    def tick(self, contributions: Mapping[str, float], decay: float = 1.0) -> None:
        """Decay every mass by ``decay`` ∈ [0, 1], then add this tick's accepted contributions."""
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        bad = sorted(a for a, c in contributions.items() if not math.isfinite(c))
        if bad:
            raise ValueError(f"contributions of {', '.join(bad)} are not finite")
        for a in self._mass:
            self._mass[a] *= decay
        for a, c in contributions.items():
            self._mass[a] = self._mass.get(a, 0.0) + float(c)

    @property
    def mass(self) -> dict[str, float]:
        return dict(self._mass)

    def shares(self) -> dict[str, float]:
        """Source -> share of the level's change; they sum to 1 (empty while nothing is attributed)."""
        total = sum(self._mass.values())
        if total <= 0.0:
            return {}
        return {a: m / total for a, m in self._mass.items()}

    def state_dict(self) -> dict[str, float]:
        return dict(self._mass)

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self._mass = {str(a): float(m) for a, m in state.items()}
