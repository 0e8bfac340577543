"""Agents spread over the ranks of a ``torch.distributed`` job: who owns which agent, and the tick's collectives.

Layout (docs/scaling.md): agent *i* of the config lives on rank ``i mod world``; only that
rank trains its per-agent and per-task slots. Shared levels are replicated. Every rank draws
every agent's task (the draw is a function of seed, tick and agent), solves its own agents
(:class:`RankMethod`), and the outcomes and swarm proposals of all ranks are gathered in the
config's agent order, so the compose phase sees exactly the proposals a single process would.
Every rank aggregates (stateful aggregators and mechanisms stay in step), and rank 0's update
is broadcast and applied everywhere (:class:`RankAggregator`), so the shared levels stay
bit-identical; :func:`check_in_sync` proves it by a hash at every checkpoint.

The mechanisms see the ranks as :class:`RankPeers` (:mod:`lorahive.mechanisms.peers`): each
reads the slots its rank holds and gathers what the others read of theirs, so every rank takes
the same decisions and makes the same edits to shared levels, and every mechanism's state is
replicated (hashed with the shared levels).

Objects travel with ``all_gather_object`` / ``gather_object`` (pickle, between the ranks of one
job only; no file is ever unpickled), tensors with ``broadcast``. :class:`Comm` counts the bytes.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, final

import torch
import torch.distributed as dist

from lorahive.config import ConfigError, RunConfig
from lorahive.mechanisms.aggregation import Aggregator, Failure
from lorahive.mechanisms.base import Aggregate, Delta, Mechanism, Proposal
from lorahive.runtime.agent import Outcome
from lorahive.runtime.methods import Method

if TYPE_CHECKING:
    from lorahive.runtime.swarm import Swarm, TickContext

__all__ = ["UNSUPPORTED", "Comm", "OutOfSync", "RankAggregator", "RankMethod", "RankPeers", "Ranks", "check_in_sync", "check_supported", "collect_slots", "shared_digest"]

#: Mechanisms not brought over to several ranks yet, refused when ``world > 1``: the config section, and the reason.
UNSUPPORTED: dict[str, tuple[str, str]] = {
    "vertical_resonance": (
        "mechanisms.vertical_resonance",
        "its sketches probe with the module inputs of the first rows of the whole tick's batch and average the per-agent level's update over every agent's slots, which has not been brought over to ranks yet",
    ),
    "context_modes": ("mechanisms.context_modes", "its router pools every agent's prompts and each mode takes the mean of its agents' context slots, which has not been brought over to ranks yet"),
    "topology": ("mechanisms.topology", "it splits and folds levels from the sketched updates of every agent's slots, which has not been brought over to ranks yet"),
}


class OutOfSync(RuntimeError):
    """The ranks no longer hold the same shared state: the run stops rather than diverge."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job."""

    rank: int
    world: int
    device: torch.device

    @property
    def lead(self) -> bool:
        """Rank 0 writes the run directory (shared levels, ledger, metrics)."""
        return self.rank == 0

    def owner(self, index: int) -> int:
        """The rank that hosts agent number ``index`` of the config."""
        return index % self.world

    def mine(self, names: Sequence[str]) -> list[str]:
        """The agents of ``names`` (in config order) this rank hosts."""
        return [n for i, n in enumerate(names) if self.owner(i) == self.rank]


def _to(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor in it (in dicts, lists, tuples) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to(v, device) for v in obj)
    return obj


@dataclass
class Comm:
    """The collectives a run uses, each counted: ``bytes[kind]`` payload bytes every rank ends up holding."""

    ranks: Ranks
    bytes: dict[str, int] = field(default_factory=dict)

    def _count(self, kind: str, n: int) -> None:
        self.bytes[kind] = self.bytes.get(kind, 0) + n

    def gather(self, kind: str, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (``all_gather_object``)."""
        data = pickle.dumps(obj)
        out: list[Any] = [None] * self.ranks.world
        dist.all_gather_object(out, data)
        self._count(kind, sum(len(d) for d in out))
        return [pickle.loads(d) for d in out]

    def gather_to_lead(self, kind: str, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on rank 0 (``gather_object``); ``None`` elsewhere."""
        data = pickle.dumps(obj)
        sizes: list[Any] = [None] * self.ranks.world
        dist.all_gather_object(sizes, len(data))
        self._count(kind, sum(sizes))
        out: list[Any] | None = [None] * self.ranks.world if self.ranks.lead else None
        dist.gather_object(data, out, dst=0)
        return None if out is None else [pickle.loads(d) for d in out]

    def broadcast_delta(self, kind: str, delta: Delta | None) -> Delta | None:
        """Rank 0's ``delta`` (or its ``None``) on every rank, as one flat tensor; the others' keys and shapes must match."""
        keys = sorted(delta) if delta is not None else []
        numel = sum(delta[k].numel() for k in keys) if delta is not None else -1
        head = torch.tensor([numel], dtype=torch.long, device=self.ranks.device)
        dist.broadcast(head, src=0)
        if int(head.item()) != numel:
            raise OutOfSync(f"rank {self.ranks.rank} computed an update of {numel} values where rank 0 has {int(head.item())}: the ranks' proposals differ")
        if delta is None:
            return None
        dtypes = {delta[k].dtype for k in keys}
        dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32  # bf16 levels send bf16
        flat = torch.cat([delta[k].detach().reshape(-1).to(self.ranks.device, dtype) for k in keys]) if keys else torch.zeros(0, device=self.ranks.device)
        dist.broadcast(flat, src=0)
        self._count(kind, flat.numel() * flat.element_size())
        out: Delta = {}
        start = 0
        for k in keys:
            t = delta[k]
            out[k] = flat[start : start + t.numel()].reshape(t.shape).to(t.device, t.dtype)
            start += t.numel()
        return {k: out[k] for k in delta}


@final
class RankPeers:
    """The ranks as the mechanisms see them (:class:`~lorahive.mechanisms.peers.Peers`): rank ``s mod world`` hosts slot ``s``."""

    def __init__(self, comm: Comm) -> None:
        self.comm = comm

    def hosts(self, slot: int) -> bool:
        return self.comm.ranks.owner(slot) == self.comm.ranks.rank

    def gather(self, obj: Any) -> list[Any]:
        """``all_gather_object`` of ``obj`` with its tensors on the CPU; they come back on this rank's device."""
        return [_to(part, self.comm.ranks.device) for part in self.comm.gather("mechanisms", _to(obj, torch.device("cpu")))]


def check_supported(cfg: RunConfig, mechanisms: Sequence[Mechanism], world: int) -> None:
    """Refuse, naming the setting to change, what a run over ``world > 1`` ranks cannot do exactly."""
    if world <= 1:
        return
    n = len(cfg.agent_names())
    if world > n:
        raise ConfigError(f"agents: {n} agents over {world} ranks would leave a rank with no agent; run with at most {n} ranks (nproc ≤ agents)")
    if cfg.stream is not None and cfg.stream.method != "hive":
        raise ConfigError(f"stream.method: {cfg.stream.method!r} trains one shared level on every agent's examples in each step; with nproc > 1 only 'hive' runs (use nproc 1 for baselines)")
    stack = cfg.stack()
    shared = [lv for lv in cfg.agent.fast_levels if stack.get(lv).scope == "shared"]
    if shared:
        raise ConfigError(f"agent.fast_levels: {shared} are shared levels, whose fast steps average every agent's gradient; with nproc > 1 the fast levels must be per-agent or per-task")
    for m in mechanisms:
        if m.enabled and m.name in UNSUPPORTED:
            section, why = UNSUPPORTED[m.name]
            raise ConfigError(f"{section}: not supported with nproc > 1 ({why}); set {section}.enabled=false or run with nproc 1")


def _cpu(delta: Delta) -> Delta:
    """``delta`` on the CPU in storage of its own: a proposal is a view of one gradient for all agents, and pickling a view sends its whole storage."""
    return {k: v.detach().cpu().clone() for k, v in delta.items()}


@final
class RankMethod:
    """The solve phase over ranks: the inner method solves this rank's agents, then every rank gets everyone's results.

    Outcomes and proposals come back in the config's agent order, as one process makes them.
    """

    def __init__(self, inner: Method, comm: Comm) -> None:
        self.inner, self.comm, self.name = inner, comm, inner.name

    def solve(self, swarm: Swarm, ctx: TickContext) -> None:
        names = list(swarm.agents)
        every = ctx.tasks
        mine = set(self.comm.ranks.mine(names))
        ctx.tasks = {n: t for n, t in every.items() if n in mine}
        before = len(ctx.proposals)
        self.inner.solve(swarm, ctx)
        ctx.tasks = every
        local = [replace(p, delta=_cpu(p.delta)) for p in ctx.proposals[before:]]
        outcomes = {n: (o.quality, o.loss) for n, o in ctx.outcomes.items()}
        parts = self.comm.gather("proposals", (outcomes, local))
        by_agent: dict[str, list[Proposal]] = {}
        for _, props in parts:
            for p in props:
                by_agent.setdefault(p.agent, []).append(replace(p, delta={k: v.to(swarm.hive.device) for k, v in p.delta.items()}))
        results = {n: q for outs, _ in parts for n, q in outs.items()}
        del ctx.proposals[before:]
        ctx.outcomes = {}
        for n in names:
            if n in results:
                own = by_agent.get(n, [])
                ctx.outcomes[n] = Outcome(results[n][0], results[n][1], own[0].delta if own else None)
                ctx.proposals.extend(own)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state)


@final
class RankAggregator:
    """Every rank aggregates the gathered proposals (its state stays in step); rank 0's update is broadcast and applied."""

    def __init__(self, inner: Aggregator, comm: Comm) -> None:
        self.inner, self.comm, self.name = inner, comm, inner.name

    def aggregate(self, tick: int, proposals: Sequence[Proposal], failures: Sequence[Failure] = ()) -> Aggregate:
        result = self.inner.aggregate(tick, proposals, failures)
        return replace(result, update=self.comm.broadcast_delta("update", result.update))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.inner.load_state_dict(state)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def shared_digest(swarm: Swarm) -> str:
    """SHA-256 over what every rank must hold identically: shared levels (weights, optimizer state),
    every level's state, and the swarm's run state and mechanisms' tensors."""
    core, h = swarm.hive.core, hashlib.sha256()
    for lv in core.levels:
        if lv.scope != "shared":
            continue
        for path, bank in core.named_banks(lv.name):
            for k, t in (("A", bank.A), ("B", bank.B), ("A0", bank.A0)):
                h.update(f"{lv.name}/{path}/{k}".encode())
                h.update(_tensor_bytes(t))
        for k, v in sorted(core.optimizers[lv.name].state_dict().items()):
            h.update(k.encode())
            h.update(_tensor_bytes(v))
    h.update(json.dumps({n: st.to_dict() for n, st in core.states.items()}, sort_keys=True).encode())
    h.update(json.dumps(swarm.state(), sort_keys=True, default=str).encode())
    for k, v in sorted(swarm.tensors().items()):
        h.update(k.encode())
        h.update(_tensor_bytes(v))
    return h.hexdigest()


def check_in_sync(comm: Comm, swarm: Swarm) -> str:
    """Raise :class:`OutOfSync` unless every rank's :func:`shared_digest` equals rank 0's; returns it."""
    digests = comm.gather("digest", shared_digest(swarm))
    bad = [r for r, d in enumerate(digests) if d != digests[0]]
    if bad:
        raise OutOfSync(
            f"tick {swarm.tick_no}: the shared levels and run state of rank(s) {bad} differ from rank 0's"
            f" (sha256 {digests[bad[0]][:12]}… vs {digests[0][:12]}…); the ranks no longer compute the same run, so it stops"
            " before writing a checkpoint. Resume from the last checkpoint; if it happens again, the ranks' software or hardware differ."
        )
    return digests[0]


def collect_slots(comm: Comm, swarm: Swarm, everywhere: bool = False) -> None:
    """Bring every agent's per-agent and per-task slots from its rank to rank 0 (``everywhere``: to every rank)."""
    core = swarm.hive.core
    mine = comm.ranks.mine(list(swarm.agents))
    payload = {lv.name: (core.slots_of(lv.name, mine), core.slot_rows(lv.name, core.slots_of(lv.name, mine))) for lv in core.levels if lv.scope != "shared"}
    parts = comm.gather("slots_everywhere", payload) if everywhere else comm.gather_to_lead("slots", payload)
    for r, part in enumerate(parts or []):
        if r == comm.ranks.rank:
            continue
        for level, (slots, rows) in part.items():
            core.load_slot_rows(level, slots, rows)
