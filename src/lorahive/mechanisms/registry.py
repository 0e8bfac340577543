"""Which mechanisms a run has: one factory per mechanism, applied to the run's config in order.

A factory reads the :class:`~lorahive.config.RunConfig` and the swarm's agent names and
returns its mechanism, or ``None`` when the config leaves it out. The swarm registers what
:func:`build_mechanisms` returns once, and runs each enabled mechanism in its phase(s) in this
order. Aggregation is not among them: it is the compose phase's own step
(:func:`~lorahive.mechanisms.compose.build_aggregator`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from lorahive.config import RunConfig
from lorahive.mechanisms.attack import build_attack
from lorahive.mechanisms.bandwidth import Bandwidth
from lorahive.mechanisms.base import PHASES, Mechanism
from lorahive.mechanisms.consensus import Consensus
from lorahive.mechanisms.consolidation import Consolidation
from lorahive.mechanisms.context_modes import ContextModes
from lorahive.mechanisms.entropy_budget import EntropyBudget
from lorahive.mechanisms.inertia import EmergentInertia
from lorahive.mechanisms.replay import SuccessReplay
from lorahive.mechanisms.resonance import DirectionTracker, SwarmDirection
from lorahive.mechanisms.screening import Screening
from lorahive.mechanisms.topology import Topology
from lorahive.mechanisms.vertical_resonance import VerticalResonance

__all__ = ["DEFAULT_FACTORIES", "TENSOR_PREFIX", "Factory", "build_mechanisms", "check_mechanisms", "is_hive", "join_states", "split_states"]

#: Where a mechanism's tensors go among a checkpoint's extra tensors: ``mechanism/<name>/<key>``.
TENSOR_PREFIX = "mechanism/"

#: Builds a run's mechanism(s) from its config and its agents' names, or ``None``.
Factory = Callable[[RunConfig, Sequence[str]], Mechanism | Sequence[Mechanism] | None]


def _attack(cfg: RunConfig, agents: Sequence[str]) -> Mechanism | None:
    return build_attack(cfg.attack, agents, cfg.seed)


def _resonance(cfg: RunConfig, agents: Sequence[str]) -> Mechanism | None:
    return DirectionTracker(SwarmDirection(cfg.aggregation.ema))


def is_hive(cfg: RunConfig) -> bool:
    """The spec's mechanisms belong to the hive; a baseline of a stream runs without them."""
    return cfg.stream is None or cfg.stream.method == "hive"


def _inertia(cfg: RunConfig, agents: Sequence[str]) -> Mechanism | None:
    if not is_hive(cfg):
        return None
    stack = cfg.stack()
    levels = cfg.mechanisms.inertia.levels or [lv.name for lv in stack.levels if lv.trainable]
    return EmergentInertia(cfg.mechanisms.inertia, levels, {lv.name: lv.inertia for lv in stack.levels})


def _vertical_resonance(cfg: RunConfig, agents: Sequence[str]) -> Mechanism | None:
    if not is_hive(cfg):
        return None
    stack = cfg.stack()
    m = cfg.mechanisms.vertical_resonance
    levels = m.levels or [lv.name for lv in stack.levels if lv.trainable and lv.scope != "task"]
    return VerticalResonance(m, levels, {lv.name: lv.lr for lv in stack.levels}, {lv.name: lv.inertia for lv in stack.levels}, cfg.seed)


def _consensus(cfg: RunConfig, agents: Sequence[str]) -> Mechanism | None:
    """Consensus moves per-agent patterns into the swarm level; its slower channel is the swarm's own."""
    if not is_hive(cfg):
        return None
    stack = cfg.stack()
    source = next((lv.name for lv in stack.levels if lv.scope == "agent" and lv.trainable), None)
    if source is None or stack.get(cfg.swarm_level).scope != "shared":
        return None
    slower = next((t for s, t in cfg.channels() if s == cfg.swarm_level), None)
    return Consensus(cfg.mechanisms.consensus, source, cfg.swarm_level, slower)


def _replay(cfg: RunConfig, agents: Sequence[str]) -> Mechanism | None:
    return SuccessReplay(cfg.mechanisms.replay, list(agents)) if is_hive(cfg) else None


def _migration(cfg: RunConfig, agents: Sequence[str]) -> list[Mechanism] | None:
    """Consolidation (detect) and the bandwidth queues that carry out its migrations (migrate, drain).

    The queues run whenever consolidation does; ``mechanisms.bandwidth.enabled: false`` lifts
    their budget (everything ready moves at once) instead of stopping migrations.
    """
    if not is_hive(cfg) or not cfg.channels():
        return None
    m = cfg.mechanisms
    cons = Consolidation(m.consolidation, cfg.channels())
    bw = Bandwidth(m.bandwidth, cons, m.consolidation.signature_rank, limited=m.bandwidth.enabled, reject_norm_ratio=cfg.aggregation.reject_norm_ratio)
    return [cons, bw]


def _screening(cfg: RunConfig, agents: Sequence[str]) -> list[Mechanism] | None:
    """Screening (decay), and the entropy budget that moves its thresholds (budget)."""
    if not is_hive(cfg):
        return None
    levels = cfg.mechanisms.screening.levels or [lv.name for lv in cfg.stack().levels if lv.trainable and lv.scope != "task"]
    screening = Screening(cfg.mechanisms.screening, levels)
    return [screening, EntropyBudget(cfg.mechanisms.entropy_budget, screening, cfg.observe.health.free_target)]


def _context_modes(cfg: RunConfig, agents: Sequence[str]) -> Mechanism | None:
    """Context modes route after the other draw mechanisms (replay sets the support) and reinforce after screening."""
    level = cfg.agent.context_level
    if not is_hive(cfg) or level is None or cfg.stack().get(level).scope == "shared":
        return None
    return ContextModes(cfg.mechanisms.context_modes, level)


def _topology(cfg: RunConfig, agents: Sequence[str]) -> Mechanism | None:
    """Topology watches every trainable level (or the configured ones) and grows or folds levels."""
    return Topology(cfg.mechanisms.topology, cfg.mechanisms.topology.levels, cfg.seed) if is_hive(cfg) else None


#: The mechanisms of every run, in registration (= run) order within each phase.
#: Health (:mod:`lorahive.observe.health`) is observation, not a mechanism of this package: the
#: swarm appends its factory (``observe`` builds on ``mechanisms``, not the other way round).
DEFAULT_FACTORIES: tuple[Factory, ...] = (_inertia, _replay, _attack, _resonance, _vertical_resonance, _consensus, _migration, _screening, _context_modes, _topology)


def check_mechanisms(mechanisms: Sequence[Mechanism]) -> list[Mechanism]:
    """``mechanisms`` as a list, after checking that names are unique and phases known."""
    names = [m.name for m in mechanisms]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes or "aggregation" in names or any(not n or "/" in n for n in names):
        raise ValueError(f"mechanism names must be unique, non-empty, without '/' and not 'aggregation'; got {names}")
    for m in mechanisms:
        unknown = [p for p in m.phases if p not in PHASES]
        if unknown:
            raise ValueError(f"mechanism {m.name!r}: unknown phases {unknown}; phases are {list(PHASES)}")
    return list(mechanisms)


def build_mechanisms(cfg: RunConfig, agents: Sequence[str], factories: Sequence[Factory] = DEFAULT_FACTORIES) -> list[Mechanism]:
    """The mechanisms ``cfg`` asks for, in the order of ``factories``."""
    out: list[Mechanism] = []
    for f in factories:
        made = f(cfg, agents)
        if made is not None:
            out.extend([made] if not isinstance(made, Sequence) else made)
    return check_mechanisms(out)


def split_states(states: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, torch.Tensor]]:
    """Per-mechanism states as (plain JSON per name, tensors keyed ``mechanism/<name>/<key>``)."""
    plain: dict[str, dict[str, Any]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, state in states.items():
        plain[name] = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
        tensors.update({f"{TENSOR_PREFIX}{name}/{k}": v.detach().cpu() for k, v in state.items() if isinstance(v, torch.Tensor)})
    return plain, tensors


def join_states(plain: Mapping[str, Mapping[str, Any]], tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """The inverse of :func:`split_states`: each mechanism's state, its JSON and tensors together."""
    out: dict[str, dict[str, Any]] = {name: dict(state) for name, state in plain.items()}
    for key, t in tensors.items():
        if key.startswith(TENSOR_PREFIX):
            name, _, rest = key.removeprefix(TENSOR_PREFIX).partition("/")
            out.setdefault(name, {})[rest] = t
    return out
