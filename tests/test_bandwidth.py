"""Bandwidth: the avalanche (critical patterns bypass, the rest drain within the budget, the
target's change per tick is bounded), stale patterns, no limit, queue order, state round trip.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
import torch

from conftest import make_model, randomize_b
from lorahive import Hive, LevelSpec, StackSpec
from lorahive.config import BandwidthConfig, ConsolidationConfig
from lorahive.core.state import LevelState
from lorahive.mechanisms.bandwidth import Bandwidth
from lorahive.mechanisms.base import TickView
from lorahive.mechanisms.consolidation import Consolidation, Ready

CH = "agent→swarm"


def view(
    core, tick: int, phase: str, shared: dict | None = None, states: dict | None = None
) -> TickView:
    return TickView(
        tick,
        phase,
        [],
        (),
        {},
        core.states if states is None else states,
        core,
        shared={} if shared is None else shared,
    )


def bandwidth(
    cfg: BandwidthConfig, rank: int = 2, limited: bool = True, channels=(("agent", "swarm"),)
) -> Bandwidth:
    return Bandwidth(
        cfg,
        Consolidation(ConsolidationConfig(signature_rank=rank), list(channels)),
        rank=rank,
        limited=limited,
    )


def record_instead(bw: Bandwidth, log: list[tuple[int, str, int, bool]], monkeypatch) -> None:
    """Replace the migration by a record of it (what moved, when, in which phase): queueing only."""

    def execute(view: TickView, src: str, dst: str, items, bypass: bool) -> list[dict[str, Any]]:
        out = []
        for q in sorted(items, key=lambda q: q.ready.slot):
            log.append((view.tick, view.phase, q.ready.slot, bypass))
            bw.counts["migrated"] += 1
            bw.counts["bypassed"] += int(bypass)
            bw.waits.setdefault(f"{src}→{dst}", []).append(view.tick - q.enqueued)
            out.append({"slot": q.ready.slot, "bypass": bypass, "waited": view.tick - q.enqueued})
        return out

    monkeypatch.setattr(bw, "execute", execute)


def ready(
    slots_autocorr: dict[int, float], tick: int, src: str = "agent", dst: str = "swarm"
) -> list[Ready]:
    return [Ready(src, dst, s, a, tick) for s, a in slots_autocorr.items()]


def tick(
    bw: Bandwidth, core, t: int, items: list[Ready] | None = None, states: dict | None = None
) -> dict[str, Any]:
    """One tick's migrate and drain phases; the tick's shared notes and actions."""
    shared: dict[str, Any] = {"ready": list(items)} if items else {}
    m = bw.run(view(core, t, "migrate", shared, states))
    d = bw.run(view(core, t, "drain", shared, states))
    return {"shared": shared, "migrate": m, "drain": d}


def level_delta(core, level: str) -> dict[str, torch.Tensor]:
    scale = core.stack.get(level).scale
    return {
        p: scale * bank.B[0].detach().double() @ bank.A[0].detach().double()
        for p, bank in core.named_banks(level)
    }


def change(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((a[p] - b[p]).square().sum()) for p in a))


# ---------------------------------------------------------------------- the avalanche (real migrations)
N = 50
CRITICAL = (7, 23, 41)


def test_the_avalanche_critical_ones_move_at_once_the_rest_within_the_budget(tokenizer):
    """50 ready patterns of 50 agents into the shared swarm level; 3 are critical."""
    stack = StackSpec(
        levels=(
            LevelSpec(name="swarm", rank=32, alpha=8, scope="shared", inertia=0.5, lr=1e-2),
            LevelSpec(name="agent", rank=2, alpha=4, scope="agent", inertia=0.5, lr=1e-2),
        )
    )
    hive = Hive(make_model(len(tokenizer)), tokenizer, stack, seed=0)
    agents = [f"a{i}" for i in range(N)]
    hive.add_agents(agents)
    randomize_b(hive, seed=11, scale=0.1)
    core = hive.core
    cfg = BandwidthConfig(fraction=0.3, recovery=0.5, critical=0.995, max_wait=20)
    bw = bandwidth(cfg, rank=2)
    gen = random.Random(0)
    auto = {s: (0.999 if s in CRITICAL else gen.uniform(0.8, 0.99)) for s in range(N)}
    budget = cfg.fraction / 0.5  # fraction / inertia of the swarm level
    size = 2 / 32  # k / (r_swarm · 1 slot)
    assert bw.budget(view(core, 1, "drain"), "swarm") == pytest.approx(budget)
    assert bw.size(view(core, 1, "drain"), "swarm") == pytest.approx(size)
    w = 1.0 / N  # each agent's pattern weighs 1 / agents in the shared level

    before = level_delta(core, "swarm")
    shared: dict[str, Any] = {"ready": ready(auto, 1)}
    m = bw.run(view(core, 1, "migrate", shared))
    assert m is not None
    moved = m.detail["migrations"]
    assert sorted(r["slot"] for r in moved) == list(CRITICAL)
    assert all(r["bypass"] and r["accepted"] and r["waited"] == 0 for r in moved)
    assert m.detail["queued"] == {CH: N - len(CRITICAL)}
    after = level_delta(core, "swarm")
    assert (
        0
        < change(after, before)
        <= w * sum(r["norm"] for r in moved) + moved[0]["truncation"] + 1e-9
    )

    order: list[float] = []
    load = bw.load[CH]
    t = 1
    while bw.queues[CH]:
        if t > 1:
            shared = {}
        depth = len(bw.queues[CH])
        before = level_delta(core, "swarm")
        d = bw.run(view(core, t, "drain", shared))
        after = level_delta(core, "swarm")
        recs = d.detail["migrations"] if d is not None else []
        n = len(recs)
        start = max(0.0, load - cfg.recovery * budget)
        # the rule: admitted while load + size ≤ budget (a clear channel admits one), as many as fit
        assert n >= 1 and (start + n * size <= budget + 1e-12 or (n == 1 and start <= 0.0)), (
            t,
            n,
            start,
        )
        assert depth - n == 0 or start + (n + 1) * size > budget, (t, n, start)
        assert n <= math.floor(budget / size)
        assert bw.load[CH] == pytest.approx(start + n * size)
        load = bw.load[CH]
        assert all(not r["bypass"] and r["accepted"] and r["waited"] == t - 1 for r in recs)
        order += sorted((auto[r["slot"]] for r in recs), reverse=True)  # records come by slot
        # the target's change this tick: at most the admitted parts (each w·‖P‖) plus what was cut
        bound = w * sum(r["norm"] for r in recs) + recs[0]["truncation"]
        assert 0 < change(after, before) <= bound + 1e-9, (t, change(after, before), bound)
        t += 1
        assert t < 30
    assert t - 1 >= 5  # 47 patterns at ≤ 9 per tick took several ticks
    assert order == sorted(order, reverse=True)  # most autocorrelated first, tick after tick
    assert len(order) == N - len(CRITICAL)
    assert bw.counts == {"requests": N, "migrated": N, "bypassed": len(CRITICAL), "rejected": 0}
    # the agents lost their patterns (agent rank 2 = k: nothing is left); slots ≥ 50 kept theirs
    assert min(float(b.B[N:].detach().abs().max()) for b in core.banks("agent")) > 0
    for bank in core.banks("agent"):
        rest = torch.einsum("sor,sri->soi", bank.B[:N].double(), bank.A[:N].double())
        assert float(rest.abs().max()) < 1e-5


# ---------------------------------------------------------------------- queueing (migrations recorded)
def test_stale_patterns_are_dropped_and_counted_as_rejected(hive, monkeypatch):
    core = hive.core
    cfg = BandwidthConfig(fraction=0.25, recovery=0.25, critical=0.999, max_wait=2)
    bw = bandwidth(cfg, rank=2)  # size 0.5 > budget 0.25 / 0.7: one item, then the channel is busy
    log: list[tuple[int, str, int, bool]] = []
    record_instead(bw, log, monkeypatch)
    first = tick(bw, core, 1, ready({0: 0.9, 1: 0.95, 2: 0.8, 3: 0.85, 4: 0.91}, 1))
    assert [(t, ph, s) for t, ph, s, _ in log] == [(1, "drain", 1)]  # the best one, no more
    assert first["drain"].detail["dropped"] == 0
    for t in (2, 3):  # still busy; waited 1, 2 ≤ max_wait
        out = tick(bw, core, t)
        assert out["drain"] is None and len(bw.queues[CH]) == 4
    out = tick(bw, core, 4)  # waited 3 > max_wait: stale
    assert out["drain"] is not None and out["drain"].detail["dropped"] == 4
    assert bw.queues[CH] == [] and len(log) == 1
    assert bw.counts["rejected"] == 4 and out["shared"]["conflicts"] == 4
    assert bw.health(4)["rejection_rate"] == pytest.approx(4 / 5)
    assert out["shared"]["bandwidth"]["rejection_rate"] == pytest.approx(4 / 5)


def test_without_the_limit_everything_ready_moves_at_once(hive, monkeypatch):
    bw = bandwidth(BandwidthConfig(fraction=0.01), rank=2, limited=False)
    log: list[tuple[int, str, int, bool]] = []
    record_instead(bw, log, monkeypatch)
    auto = {s: 0.5 + s / 100 for s in range(N)}
    out = tick(bw, hive.core, 1, ready(auto, 1))
    assert sorted(s for _, _, s, _ in log) == list(range(N))
    # at once, in the migrate phase, and not as a bypass: there is no limit to bypass
    assert {(t, ph, b) for t, ph, _, b in log} == {(1, "migrate", False)}
    assert out["migrate"] is not None and out["drain"] is None
    assert bw.queues[CH] == [] and bw.counts["migrated"] == N and bw.counts["bypassed"] == 0


def test_the_queue_drains_most_autocorrelated_first(hive, monkeypatch):
    cfg = BandwidthConfig(fraction=0.5, recovery=1.0, critical=0.999)
    bw = bandwidth(cfg, rank=1)  # size 1/4, budget 0.5 / 0.4 = 1.25: 5 per tick
    states = {"swarm": LevelState(mix=1.0, inertia=0.4, lr=1e-2)}
    log: list[tuple[int, str, int, bool]] = []
    record_instead(bw, log, monkeypatch)
    gen = random.Random(3)
    auto = {s: gen.uniform(0.1, 0.99) for s in range(12)}
    items = ready(auto, 1)
    gen.shuffle(items)
    tick(bw, hive.core, 1, items[:7], states)
    tick(bw, hive.core, 2, items[7:], states)  # later arrivals with higher autocorrelation go first
    tick(bw, hive.core, 3, None, states)
    per_tick = {t: [s for tt, _, s, _ in log if tt == t] for t in (1, 2, 3)}
    assert [len(v) for v in per_tick.values()] == [5, 5, 2]
    first = sorted(auto, key=lambda s: -auto[s])
    assert per_tick[1] == sorted(
        sorted(items[:7], key=lambda r: -r.autocorr)[i].slot for i in range(5)
    )
    rest = [s for s in first if s not in per_tick[1]]
    assert sorted(per_tick[2]) == sorted(rest[:5]) and sorted(per_tick[3]) == sorted(rest[5:])


def test_a_slot_ready_again_keeps_its_place_and_gets_its_new_autocorrelation(hive, monkeypatch):
    cfg = BandwidthConfig(fraction=0.01, recovery=0.01, critical=0.999)
    bw = bandwidth(cfg, rank=2)
    log: list[tuple[int, str, int, bool]] = []
    record_instead(bw, log, monkeypatch)
    # slot 0 moves, the channel is then busy
    tick(bw, hive.core, 1, ready({0: 0.9, 1: 0.8, 2: 0.7}, 1))
    tick(bw, hive.core, 2, ready({2: 0.95}, 2))
    q = {x.ready.slot: x for x in bw.queues[CH]}
    assert sorted(q) == [1, 2] and q[2].ready.autocorr == 0.95 and q[2].enqueued == 1
    assert bw.counts["requests"] == 4
    # ready again and now critical: it leaves the queue and bypasses it at once, its wait counted from tick 1
    tick(bw, hive.core, 3, ready({1: 0.9995}, 3))
    assert 1 not in {x.ready.slot for x in bw.queues[CH]}
    assert (3, "migrate", 1, True) in log, log
    assert bw.waits[CH] == [2]


def test_state_round_trip_keeps_queues_loads_and_counts(hive, monkeypatch):
    cfg = BandwidthConfig(fraction=0.5, recovery=0.3, critical=0.99)
    states = {"swarm": LevelState(mix=1.0, inertia=0.4, lr=1e-2)}
    channels = (("agent", "swarm"), ("context", "agent"))
    bw = bandwidth(cfg, rank=1, channels=channels)
    log: list[tuple[int, str, int, bool]] = []
    record_instead(bw, log, monkeypatch)
    gen = random.Random(5)
    tick(
        bw,
        hive.core,
        1,
        ready({s: gen.uniform(0.5, 0.98) for s in range(9)}, 1) + ready({20: 0.995}, 1),
        states,
    )
    tick(bw, hive.core, 2, ready({s: gen.uniform(0.5, 0.98) for s in range(9, 14)}, 2), states)
    assert bw.queues[CH] and bw.load[CH] > 0 and bw.counts["bypassed"] == 1

    state = json.loads(json.dumps(bw.state_dict()))  # the run state is plain JSON
    fresh = bandwidth(cfg, rank=1, channels=channels)
    fresh.load_state_dict(state)
    assert fresh.queues == bw.queues and fresh.load == bw.load and fresh.counts == bw.counts
    assert fresh.state_dict() == bw.state_dict()

    # and it goes on exactly as the original would
    log2: list[tuple[int, str, int, bool]] = []
    record_instead(fresh, log2, monkeypatch)
    n = len(log)
    for t in (3, 4):
        tick(bw, hive.core, t, None, states)
        tick(fresh, hive.core, t, None, states)
    assert log[n:] == log2 and len(log2) > 0
    assert fresh.state_dict() == bw.state_dict()


def test_wait_time_when_none_waits_is_the_mean_wait_of_all_of_this_ticks_migrations(
    hive, monkeypatch
):
    """Bypassed and drained migrations of one tick both count (the bypass's wait is 0)."""
    cfg = BandwidthConfig(fraction=0.5, recovery=1.0, critical=0.99)
    states = {"swarm": LevelState(mix=1.0, inertia=0.4, lr=1e-2)}
    bw = bandwidth(cfg, rank=2)  # size 0.5, budget 1.25: 2 per tick
    log: list[tuple[int, str, int, bool]] = []
    record_instead(bw, log, monkeypatch)
    tick(bw, hive.core, 1, ready({0: 0.9, 1: 0.8, 2: 0.7, 3: 0.6}, 1), states)
    # slot 5 bypasses; 2, 3 drain after 3 ticks
    out = tick(bw, hive.core, 4, ready({5: 0.995}, 4), states)
    assert [(s, b) for t, _, s, b in log if t == 4] == [(5, True), (2, False), (3, False)]
    assert bw.queues[CH] == []
    assert out["shared"]["bandwidth"]["wait_time"][CH] == pytest.approx((0 + 3 + 3) / 3)


def test_migration_operations_count_the_requests(hive, monkeypatch):
    """health's conflict rate counts migrations requested: a dropped request is an operation too."""
    cfg = BandwidthConfig(fraction=0.25, recovery=0.25, critical=0.999, max_wait=1)
    bw = bandwidth(cfg, rank=2)
    log: list[tuple[int, str, int, bool]] = []
    record_instead(bw, log, monkeypatch)
    ops = conflicts = 0
    for t, items in ((1, ready({0: 0.9, 1: 0.8, 2: 0.7}, 1)), (2, None), (3, None)):
        out = tick(bw, hive.core, t, items)
        ops += out["shared"].get("ops", {}).get("migrate", 0)
        conflicts += out["shared"].get("conflicts", 0)
    assert len(log) == 1 and bw.counts["rejected"] == 2 and conflicts == 2
    assert ops == bw.counts["requests"] == 3
