"""Bandwidth-limited migration (seed 004 §F; DESIGN.md §3): queues per channel, a budget, an emergency bypass.

Patterns that consolidation found stable (``view.shared["ready"]``) wait in their channel's
queue, most autocorrelated first. A channel ``source → target`` may move, per tick,
``budget = fraction / inertia_target`` of the target level's parameters — narrower toward
slower levels, as the seed requires; an item's size is the parameters it moves,
``k · Σ_m (in_m + out_m)``, over the target level's. What a channel moved is its *load*;
the load recovers by ``recovery × budget`` each tick, and an item is admitted while
``load + size ≤ budget`` (a clear channel admits one item even if it is larger than the
budget). A pattern with autocorrelation ≥ ``critical`` — or any ready pattern of a tick in
which vertical resonance found the levels learning alike (``view.shared["resonant"]``) —
bypasses the queue at once (``migrate`` phase); the rest move in the ``drain`` phase. A pattern that waited more than
``max_wait`` ticks is dropped as stale (a rejection, and a conflict: the queue undid what
consolidation accepted). With the bandwidth mechanism switched off, everything ready moves
at once.

A migration (:meth:`Bandwidth.execute`) takes the slot's dominant part as it is *now*,
adds it to the target with :meth:`HiveCore.add_delta` (re-factored to the target's rank; the
truncation error is recorded) and removes it from the source exactly (the rest of the slot
has rank r − k). Both slots' optimizer moments are cleared (their factors were re-based),
and both start over in consolidation and screening. A move from per-agent slots into a
shared level is a proposal like any other: the patterns of the tick are validated (finite;
not above ``reject_norm_ratio`` × their median norm when three or more) and aggregated
as a weighted mean in factor form — exact, because ``Σ w_i·U_i S_i V_i`` is the product of the
concatenated factors — each weighing ``1 / agents``, so that the agents' views change by
``+1/N Σ_j P_j − P_i``, zero on average over the swarm (and exactly zero for one agent or
equal patterns). Robust coordinate-wise strategies (median) have no exact factor form, so
migrations use this rule whatever ``aggregation.strategy`` is.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, final

import torch

from lorahive.config import BandwidthConfig
from lorahive.mechanisms.base import Action, TickView
from lorahive.mechanisms.consolidation import NONE, Consolidation, Ready, dominant, spread
from lorahive.mechanisms.peers import held

__all__ = ["Bandwidth", "Queued"]


@dataclass
class Queued:
    """A ready pattern waiting in a channel's queue."""

    ready: Ready
    size: float
    enqueued: int


def channel_name(source: str, target: str) -> str:
    return f"{source}→{target}"


@final
class Bandwidth:
    """Migration queues under a budget, and the migrations themselves (``migrate``, ``drain``)."""

    name = "bandwidth"
    phases: tuple[str, ...] = ("migrate", "drain")

    def __init__(
        self,
        cfg: BandwidthConfig,
        consolidation: Consolidation,
        rank: int,
        limited: bool = True,
        reject_norm_ratio: float | None = None,
    ) -> None:
        self.cfg = cfg
        self.consolidation = consolidation
        self.enabled = consolidation.enabled
        self.limited = limited
        self.rank = rank
        self.reject_norm_ratio = reject_norm_ratio
        self.channels = [channel_name(s, t) for s, t in consolidation.channels]
        self.queues: dict[str, list[Queued]] = {c: [] for c in self.channels}
        self.load: dict[str, float] = dict.fromkeys(self.channels, 0.0)
        self.counts = {"requests": 0, "migrated": 0, "bypassed": 0, "rejected": 0}
        self.waits: dict[str, list[int]] = {c: [] for c in self.channels}  # waits of this tick's migrations

    # ------------------------------------------------------------------ phases
    def run(self, view: TickView) -> Action | None:
        return self._migrate(view) if view.phase == "migrate" else self._drain(view)

    def budget(self, view: TickView, target: str) -> float:
        """Share of ``target``'s parameters a channel into it may move per tick: ``fraction / inertia``."""
        return self.cfg.fraction / max(view.states[target].inertia, 0.05)

    def size(self, view: TickView, target: str) -> float:
        """Share of ``target``'s parameters one pattern of rank k moves: ``k / (r_target · slots_target)``."""
        spec = view.core.stack.get(target)
        return min(self.rank, spec.rank) / (spec.rank * view.core.n_slots(target))

    def _migrate(self, view: TickView) -> Action | None:
        ready: list[Ready] = view.shared.pop("ready", [])
        self.waits = {c: [] for c in self.queues}  # this tick's: the bypass's and the drain's migrations
        ops = view.shared.setdefault("ops", {})
        ops["migrate"] = ops.get("migrate", 0) + len(ready)  # health counts migrations requested
        now: list[Queued] = []
        resonant = bool(view.shared.get("resonant"))  # vertical resonance: this tick's ready patterns are universal
        for r in ready:
            self.counts["requests"] += 1
            ch = channel_name(r.source, r.target)
            queue = self.queues.setdefault(ch, [])
            item = Queued(r, self.size(view, r.target), view.tick)
            same = next((q for q in queue if q.ready.slot == r.slot), None)
            critical = r.autocorr >= self.cfg.critical or resonant
            if same is not None and not (self.limited and critical):
                same.ready = r  # already waiting: keep its place in time, refresh its autocorrelation
            elif not self.limited or critical:
                if same is not None:  # waiting, and now critical: it leaves the queue and moves at once
                    queue.remove(same)
                    item.enqueued = same.enqueued
                now.append(item)
            else:
                queue.append(item)
        done = self._execute_all(view, now, bypass=self.limited)
        return Action("migrate", {"migrations": done, "queued": self._depths()}) if done else None

    def _drain(self, view: TickView) -> Action | None:
        admitted: list[Queued] = []
        dropped = 0
        for ch, queue in self.queues.items():
            if not queue:
                self.load[ch] = max(0.0, self.load[ch] - self.cfg.recovery * self._budget_of(view, ch))
                continue
            target = queue[0].ready.target
            budget = self.budget(view, target)
            self.load[ch] = max(0.0, self.load[ch] - self.cfg.recovery * budget)
            stale = [q for q in queue if view.tick - q.enqueued > self.cfg.max_wait]
            dropped += len(stale)
            queue[:] = sorted((q for q in queue if q not in stale), key=lambda q: -q.ready.autocorr)
            while queue and (self.load[ch] + queue[0].size <= budget or self.load[ch] <= 0.0):
                q = queue.pop(0)
                self.load[ch] += q.size
                admitted.append(q)
        self.counts["rejected"] += dropped
        view.shared["conflicts"] = view.shared.get("conflicts", 0) + dropped
        done = self._execute_all(view, admitted, bypass=False)
        view.shared["bandwidth"] = self.health(view.tick)
        if not done and not dropped:
            return None
        return Action("migrate", {"migrations": done, "queued": self._depths(), "dropped": dropped})

    def _budget_of(self, view: TickView, channel: str) -> float:
        target = channel.split("→", 1)[1]
        return self.budget(view, target) if target in view.states else 0.0

    def _depths(self) -> dict[str, int]:
        return {c: len(q) for c, q in self.queues.items()}

    def health(self, tick: int) -> dict[str, Any]:
        """Queue depth and wait per channel, rejection and fast-track rates so far (for health).

        A channel's wait is the mean age of the patterns waiting in it, or — when none is
        waiting — the mean wait of those that moved this tick (0 when neither).
        """
        waits = {}
        for c, q in self.queues.items():
            ages = [tick - x.enqueued for x in q] or self.waits.get(c) or [0]
            waits[c] = float(sum(ages) / len(ages))
        total = self.counts["migrated"]
        return {
            "queue_depth": self._depths(),
            "wait_time": waits,
            "rejection_rate": self.counts["rejected"] / self.counts["requests"] if self.counts["requests"] else 0.0,
            "fast_track_rate": self.counts["bypassed"] / total if total else None,
            "requests": self.counts["requests"],
            "migrated": total,
        }

    # ------------------------------------------------------------------ migrations
    def _execute_all(self, view: TickView, items: Sequence[Queued], bypass: bool) -> list[dict[str, Any]]:
        done: list[dict[str, Any]] = []
        by_channel: dict[tuple[str, str], list[Queued]] = {}
        for q in items:
            by_channel.setdefault((q.ready.source, q.ready.target), []).append(q)
        for (src, dst), group in by_channel.items():
            done += self.execute(view, src, dst, group, bypass)
        return done

    @torch.no_grad()
    def execute(self, view: TickView, src: str, dst: str, items: Sequence[Queued], bypass: bool) -> list[dict[str, Any]]:
        """Move each item's dominant part from ``src`` to ``dst``; per item, what happened.

        Each process takes the patterns of the slots it holds; the norms (and, into a shared
        level, the patterns) of all of them are gathered, so every process validates the same
        and adds the same to a shared level. A per-agent slot is edited by its host only.
        """
        core, peers = view.core, view.peers
        mine = held(peers, core, src, sorted({q.ready.slot for q in items}))
        own = dominant(core, src, mine, self.rank) if mine else NONE
        src_shared = core.stack.get(src).scope == "shared"
        dst_shared = core.stack.get(dst).scope == "shared"
        slots, pat = spread(view, src, mine, own, "USV" if dst_shared else "S")
        norms = pat.energy().sqrt().tolist()
        ok = self._validate(norms)
        mix_dst = view.states[dst].mix
        factor = view.states[src].mix / mix_dst if mix_dst else math.nan
        keep = [i for i, good in enumerate(ok) if good and math.isfinite(factor)]
        truncation: dict[int, float] = {}
        if keep:
            moved = [slots[i] for i in keep]
            here = [mine.index(s) for s in moved if s in mine]  # own's rows of the moved slots this process holds
            if dst_shared:
                w = (1.0 / max(len(core.agents), 1)) if not src_shared else 1.0
                delta = {p: (torch.cat([w * factor * pat.U[p][i] * pat.S[p][i] for i in keep], 1), torch.cat([pat.V[p][i] for i in keep], 0)) for p in pat.U}
                err = core.add_delta(dst, 0, delta)
                truncation = dict.fromkeys(keep, err)
                dst_slots = [0]
            else:
                dst_slots = moved
                into = [j for j in here if held(peers, core, dst, [mine[j]])]
                errs = core.add_deltas(dst, [mine[j] for j in into], [{p: (factor * own.U[p][j] * own.S[p][j], own.V[p][j]) for p in own.U} for j in into])
                errs_of = {s: e for part in peers.gather(dict(zip([mine[j] for j in into], errs, strict=True))) for s, e in part.items()}
                truncation = {i: errs_of[slots[i]] for i in keep}
            # exact removal: the rest of each slot has rank r − k
            core.add_deltas(src, [mine[j] for j in here], [{p: (-own.U[p][j] * own.S[p][j], own.V[p][j]) for p in own.U} for j in here])
            core.forget_moments(src, [mine[j] for j in here])
            core.forget_moments(dst, held(peers, core, dst, dst_slots))
            self.consolidation.forget(src, moved)
            self.consolidation.forget(dst, dst_slots)
            rewritten = view.shared.setdefault("rewritten", {})
            rewritten.setdefault(src, set()).update(moved)
            rewritten.setdefault(dst, set()).update(dst_slots)
        ch = channel_name(src, dst)
        out = []
        agents = core.agents
        by_slot = {q.ready.slot: q for q in items}
        for i, s in enumerate(slots):
            q = by_slot[s]
            accepted = i in keep
            waited = view.tick - q.enqueued
            if accepted:
                self.counts["migrated"] += 1
                self.counts["bypassed"] += int(bypass)
                self.waits.setdefault(ch, []).append(waited)
            else:
                self.counts["rejected"] += 1
                view.shared["conflicts"] = view.shared.get("conflicts", 0) + 1
            out.append({
                "channel": ch, "source": src, "target": dst, "slot": s,
                "agent": agents[s] if not src_shared and s < len(agents) else None,
                "autocorr": round(q.ready.autocorr, 6), "params": self._params(core, src), "bypass": bypass,
                "waited": waited, "truncation": truncation.get(i, 0.0), "norm": norms[i], "accepted": accepted,
            })  # fmt: skip
        return out

    def _params(self, core: Any, level: str) -> int:
        k = min(self.rank, core.stack.get(level).rank)
        return k * sum(b.in_features + b.out_features for b in core.banks(level))

    def _validate(self, norms: list[float]) -> list[bool]:
        finite = [math.isfinite(n) and n > 0 for n in norms]
        good = [n for n, f in zip(norms, finite, strict=True) if f]
        if self.reject_norm_ratio is None or len(good) < 3:
            return finite
        bound = self.reject_norm_ratio * statistics.median(good)
        return [f and n <= bound for n, f in zip(norms, finite, strict=True)]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        queues = {c: [[q.ready.source, q.ready.target, q.ready.slot, q.ready.autocorr, q.ready.tick, q.size, q.enqueued] for q in qs] for c, qs in self.queues.items()}
        return {"queues": queues, "load": dict(self.load), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for c, qs in state.get("queues", {}).items():
            self.queues[c] = [Queued(Ready(str(s), str(t), int(sl), float(a), int(tk)), float(sz), int(e)) for s, t, sl, a, tk, sz, e in qs]
        self.load.update({c: float(v) for c, v in state.get("load", {}).items()})
        self.counts.update({k: int(v) for k, v in state.get("counts", {}).items()})
