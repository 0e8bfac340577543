"""Consolidation: signatures are the dense top-k SVD, overlap is a subspace overlap, the ready
rule (``checks`` stable checks every ``every`` ticks), and migration (DESIGN.md invariant 5:
the function is preserved when the target rank suffices; the truncation error when it does not).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_model, randomize_b
from lorahive import Hive, LevelSpec, StackSpec
from lorahive.config import BandwidthConfig, ConsolidationConfig
from lorahive.core.model import persistent_levels
from lorahive.mechanisms.bandwidth import Bandwidth, Queued
from lorahive.mechanisms.base import TickView
from lorahive.mechanisms.consolidation import (
    Consolidation,
    Pattern,
    Ready,
    by_shape,
    dominant,
    overlap,
)
from lorahive.observe.ledger import Ledger
from lorahive.runtime import run as runs
from tiny_runs import tiny_config

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

PROMPTS = ["The capital of France is", "Question: what colour is the sky? Answer:"]


# ---------------------------------------------------------------------- helpers
def dense(core, level: str, slot: int) -> dict[str, torch.Tensor]:
    """The level's own term ``(a/r)·B·A`` of ``slot`` per module, in float64."""
    scale = core.stack.get(level).scale
    return {
        path: scale * bank.B[slot].detach().double() @ bank.A[slot].detach().double()
        for path, bank in core.named_banks(level)
    }


def top_k(m: torch.Tensor, k: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return u[:, :k] * s[:k] @ vh[:k]


def frob(parts: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.square().sum()) for t in parts.values()))


def view(core, tick: int, phase: str = "detect", shared: dict | None = None) -> TickView:
    return TickView(
        tick, phase, [], (), {}, core.states, core, shared={} if shared is None else shared
    )


def stack_of(ranks: dict[str, int], target: str | None = None, mix: float = 1.0) -> StackSpec:
    """domain · swarm (shared) · agent · context, with the given ranks (2 elsewhere), distinct alphas."""
    scopes = {"domain": "shared", "swarm": "shared", "agent": "agent", "context": "task"}
    alphas = {"domain": 3.0, "swarm": 4.0, "agent": 8.0, "context": 2.0}
    return StackSpec(
        levels=tuple(
            LevelSpec(
                name=n,
                rank=ranks.get(n, 2),
                alpha=alphas[n],
                scope=scope,  # type: ignore[arg-type]
                inertia=0.5,
                lr=1e-2,
                mix=mix if n == target else 1.0,
            )
            for n, scope in scopes.items()
        )
    )


def make_hive(tokenizer, stack: StackSpec, agents: list[str]) -> Hive:
    h = Hive(make_model(len(tokenizer)), tokenizer, stack, seed=0)
    h.add_agents(agents)
    return h


@torch.no_grad()
def keep_rank(core, level: str, rank: int) -> None:
    """Zero B's columns beyond ``rank``: the level's content has rank ``rank`` (room for the rest)."""
    for bank in core.banks(level):
        bank.B[:, :, rank:] = 0.0


def migrate(core, src: str, dst: str, slots: list[int], k: int) -> list[dict]:
    cons = Consolidation(ConsolidationConfig(signature_rank=k), [(src, dst)])
    bw = Bandwidth(BandwidthConfig(), cons, rank=k)
    items = [Queued(Ready(src, dst, s, 0.99, 1), bw.size(view(core, 1), dst), 1) for s in slots]
    return bw.execute(view(core, 1, "migrate"), src, dst, items, bypass=False)


# ---------------------------------------------------------------------- dominant / overlap
@pytest.mark.parametrize(("level", "k"), [("swarm", 2), ("swarm", 1), ("agent", 2), ("agent", 3)])
def test_dominant_is_the_top_k_svd_of_the_dense_delta(hive, level, k):
    randomize_b(hive, seed=3, scale=0.1)
    core = hive.core
    slots = [0] if level == "swarm" else [0, 1, 2]
    pat = dominant(core, level, slots, k)
    kk = min(k, core.stack.get(level).rank)
    paths = [p for p, _ in core.named_banks(level)]
    assert set(pat.U) == set(pat.S) == set(pat.V) == set(paths)
    for i, s in enumerate(slots):
        for path, m in dense(core, level, s).items():
            u, sv, vh = torch.linalg.svd(m, full_matrices=False)
            U, S, V = pat.U[path][i].double(), pat.S[path][i].double(), pat.V[path][i].double()
            assert U.shape == (m.shape[0], kk) and V.shape == (kk, m.shape[1]) and S.shape == (kk,)
            torch.testing.assert_close(S, sv[:kk], rtol=1e-4, atol=1e-7)
            # subspaces up to sign: the projectors agree; U·S·V is the dense top-k part itself
            torch.testing.assert_close(U @ U.T, u[:, :kk] @ u[:, :kk].T, rtol=0, atol=1e-4)
            torch.testing.assert_close(V.T @ V, vh[:kk].T @ vh[:kk], rtol=0, atol=1e-4)
            torch.testing.assert_close(U * S @ V, top_k(m, kk), rtol=0, atol=1e-5 * float(sv[0]))
            torch.testing.assert_close(U.T @ U, torch.eye(kk, dtype=U.dtype), rtol=0, atol=1e-5)
    energy = pat.energy()
    expected = [
        sum(float(top_k(m, kk).square().sum()) for m in dense(core, level, s).values())
        for s in slots
    ]
    torch.testing.assert_close(
        energy.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=0
    )


@pytest.mark.parametrize("k", [1, 3])
def test_add_deltas_over_many_slots_equals_add_delta_one_slot_at_a_time(tokenizer, k):
    def fresh() -> Hive:
        h = Hive(make_model(len(tokenizer)), tokenizer, seed=0)
        h.add_agents(["a", "b", "c"])
        randomize_b(h, seed=5, scale=0.1)
        return h

    batched, single = fresh(), fresh()
    gen = torch.Generator().manual_seed(0)
    deltas = [
        {p: (torch.randn(bank.out_features, k, generator=gen), torch.randn(k, bank.in_features, generator=gen)) for p, bank in batched.core.named_banks("agent")}
        for _ in range(3)
    ]
    slots = [2, 0, 1]
    errs = batched.core.add_deltas("agent", slots, deltas)
    one = [single.core.add_delta("agent", s, d) for s, d in zip(slots, deltas, strict=True)]
    assert errs == pytest.approx(one, rel=1e-5)
    assert all(e > 0 for e in errs)  # rank 8 + k does not fit into rank 8
    # the factors of a truncated SVD are defined up to rotations within equal singular values, so the slots' ΔW = B·A are compared
    xs, ys = batched.core.level_params("agent"), single.core.level_params("agent")
    for p in [p for p in xs if p.endswith(".A")]:
        b = p[:-2] + ".B"
        torch.testing.assert_close(xs[b] @ xs[p], ys[b] @ ys[p], rtol=1e-4, atol=1e-5, msg=p)
    with pytest.raises(ValueError, match="distinct"):
        batched.core.add_deltas("agent", [0, 0], deltas[:2])
    with pytest.raises(ValueError, match="2 slots but 1 deltas"):
        batched.core.add_deltas("agent", [0, 1], deltas[:1])


def test_by_shape_groups_every_bank_once_by_its_shape(hive):
    groups = by_shape(hive.core, "swarm")
    paths = [p for g in groups.values() for p, _ in g]
    assert sorted(paths) == sorted(p for p, _ in hive.core.named_banks("swarm"))
    assert all(
        (b.out_features, b.in_features) == shape for shape, g in groups.items() for _, b in g
    )
    assert len(groups) < len(paths)  # a handful of shapes, each repeated per layer


def _orthonormal(gen: torch.Generator, n: int, out: int, k: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, out, k, generator=gen, dtype=torch.float64))[0]


def _pattern(
    gen: torch.Generator, n: int, shapes: list[int], k: int, zero: bool = False
) -> Pattern:
    U = {f"m{j}": _orthonormal(gen, n, out, k) for j, out in enumerate(shapes)}
    scale = 0.0 if zero else 1.0
    S = {p: (torch.rand(n, k, generator=gen, dtype=torch.float64) + 0.01) * scale for p in U}
    return Pattern(U, S, {})


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 4),
    k=st.integers(1, 3),
    shapes=st.lists(st.sampled_from([4, 8, 16, 64]), min_size=1, max_size=3),
)
def test_overlap_is_one_for_identical_signatures_and_in_unit_interval(seed, n, k, shapes):
    gen = torch.Generator().manual_seed(seed)
    shapes = [max(out, k) for out in shapes]
    now = _pattern(gen, n, shapes, k)
    same = overlap(now.U, now)
    torch.testing.assert_close(same, torch.ones(n, dtype=same.dtype), rtol=0, atol=1e-9)
    # another orthonormal basis of the same subspaces (rotations and sign flips): still 1
    rot = {p: u @ _orthonormal(gen, n, k, k) for p, u in now.U.items()}
    torch.testing.assert_close(
        overlap(rot, now), torch.ones(n, dtype=same.dtype), rtol=0, atol=1e-9
    )
    other = _pattern(gen, n, shapes, k)
    o = overlap(other.U, now)
    assert o.shape == (n,) and bool(((o >= 0) & (o <= 1 + 1e-9)).all())
    # no energy at all: 0, not NaN
    assert torch.equal(
        overlap(other.U, _pattern(gen, n, shapes, k, zero=True)), torch.zeros(n, dtype=o.dtype)
    )


def test_overlap_of_random_subspaces_is_about_k_over_out():
    gen = torch.Generator().manual_seed(0)
    n, out, k = 400, 128, 2
    now = _pattern(gen, n, [out], k)
    prev = _pattern(gen, n, [out], k)
    mean = float(overlap(prev.U, now).mean())
    assert 0.75 * k / out < mean < 1.25 * k / out  # E‖PᵀU‖²_F / k = k / out


def test_overlap_weighs_modules_by_their_energy():
    gen = torch.Generator().manual_seed(1)
    q = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))[0]
    a, b = q[:, :2][None], q[:, 2:4][None]  # orthogonal subspaces of R^8
    s = {
        "x": torch.tensor([[2.0, 1.0]], dtype=torch.float64),
        "y": torch.tensor([[1.0, 1.0]], dtype=torch.float64),
    }
    now = Pattern({"x": a, "y": a}, s, {})
    # module x unchanged (overlap 1, energy 5), module y turned orthogonal (overlap 0, energy 2)
    o = overlap({"x": a, "y": b}, now)
    torch.testing.assert_close(
        o, torch.tensor([5.0 / 7.0], dtype=torch.float64), rtol=0, atol=1e-12
    )
    # half of y's subspace kept: its overlap is 1/2
    half = torch.cat([a[:, :, :1], b[:, :, :1]], 2)
    o = overlap({"x": a, "y": half}, now)
    torch.testing.assert_close(
        o, torch.tensor([(5.0 + 2.0 * 0.5) / 7.0], dtype=torch.float64), rtol=0, atol=1e-12
    )


# ---------------------------------------------------------------------- the ready rule
@torch.no_grad()
def _rotate(core, level: str, slot: int, gen: torch.Generator) -> None:
    for bank in core.banks(level):
        bank.B[slot] = torch.randn(bank.B[slot].shape, generator=gen) * 0.1
        bank.A[slot] = torch.randn(bank.A[slot].shape, generator=gen) * 0.1


def test_a_slot_that_stays_put_becomes_ready_after_checks_stable_checks_a_rotating_one_never(hive):
    randomize_b(hive, seed=2)
    core = hive.core
    cfg = ConsolidationConfig(every=2, checks=2, threshold=0.9, signature_rank=2)
    cons = Consolidation(cfg, [("agent", "swarm")])
    gen = torch.Generator().manual_seed(5)
    ready: dict[int, list[Ready]] = {}
    autocorr: dict[int, dict[str, float]] = {}
    for t in range(1, 13):
        _rotate(core, "agent", 1, gen)  # slot 1 gets new directions every tick
        shared: dict = {}
        action = cons.run(view(core, t, shared=shared))
        if t % cfg.every:
            assert action is None and "ready" not in shared  # checks only every `every` ticks
            continue
        assert action is not None
        autocorr[t] = action.detail["channels"]["agent→swarm"]["autocorr"]
        ready[t] = shared["ready"]
    stable = sorted(core.written["agent"] - {1})
    assert stable  # the slots that stay put
    # 1st check: no signature yet; 2nd: 1 stable check; 3rd: 2 = checks → ready at every·(checks+1)
    assert ready[2] == [] and ready[4] == []
    for t in (6, 8, 10, 12):
        assert sorted(r.slot for r in ready[t]) == stable
        assert all(r.source == "agent" and r.target == "swarm" and r.tick == t for r in ready[t])
        assert all(r.autocorr > 1 - 1e-5 for r in ready[t])
    assert cons.stable["agent"][1] == 0 and all(
        a < cfg.threshold for a in [autocorr[t]["1"] for t in (4, 6, 8, 10, 12)]
    )
    # stable checks at 4, 6, 8, 10, 12
    assert [cons.stable["agent"][s] for s in stable] == [5] * len(stable)


def test_the_timer_trigger_makes_a_rotating_slot_ready_on_the_same_schedule(hive):
    """``trigger: timer`` (experiment 6's control): every check counts, so the rotating slot is ready too."""
    randomize_b(hive, seed=2)
    core = hive.core
    cfg = ConsolidationConfig(every=2, checks=2, threshold=0.9, signature_rank=2, trigger="timer")
    cons = Consolidation(cfg, [("agent", "swarm")])
    gen = torch.Generator().manual_seed(5)
    ready: dict[int, list[int]] = {}
    for t in range(2, 9, 2):
        _rotate(core, "agent", 1, gen)
        shared: dict = {}
        action = cons.run(view(core, t, shared=shared))
        assert action is not None
        ready[t] = sorted(r.slot for r in shared["ready"])
        if t > 2:
            assert action.detail["channels"]["agent→swarm"]["autocorr"]["1"] < cfg.threshold  # still measured
    every = sorted(core.written["agent"])
    assert 1 in every and ready[2] == [] and ready[4] == []
    assert ready[6] == every and ready[8] == every


def test_the_trigger_is_validated():
    assert ConsolidationConfig().trigger == "autocorrelation"
    with pytest.raises(ValueError, match="trigger"):
        ConsolidationConfig(trigger="clock")


def test_after_migration_the_slot_count_restarts(tokenizer):
    """agent (rank 4) → swarm with k = 2: ready at tick 6, moved at once; its rest (rank 2) starts over."""
    hive = make_hive(tokenizer, stack_of({"agent": 4, "swarm": 8}), ["ann", "bob"])
    randomize_b(hive, seed=4)
    core = hive.core
    cons = Consolidation(
        ConsolidationConfig(every=2, checks=2, threshold=0.9, signature_rank=2),
        [("agent", "swarm")],
    )
    # everything ready is critical: moved at once
    bw = Bandwidth(BandwidthConfig(critical=0.5), cons, rank=2)
    moved: dict[int, list[int]] = {}
    agent_before = {s: dense(core, "agent", s) for s in (0, 1)}
    for t in range(1, 15):
        shared: dict = {}
        for phase, m in (("detect", cons), ("migrate", bw), ("drain", bw)):
            action = m.run(view(core, t, phase, shared))
            if phase == "migrate" and action is not None:
                moved[t] = [r["slot"] for r in action.detail["migrations"]]
                assert all(r["bypass"] and r["accepted"] for r in action.detail["migrations"])
        if t == 6:
            assert 0 not in cons.stable["agent"] and 0 not in cons.signatures["agent"]
            rest = dense(core, "agent", 0)
            removed = {p: agent_before[0][p] - rest[p] for p in rest}
            for p, m in agent_before[0].items():  # what left is the dominant part
                torch.testing.assert_close(removed[p], top_k(m, 2), rtol=0, atol=1e-5)
    # both agents' slots move at tick 6; what is left of them (rank 2) is ready again 3 checks later
    assert moved == {6: [0, 1], 12: [0, 1]}
    assert bw.counts["migrated"] == 4 and bw.counts["bypassed"] == 4


# ---------------------------------------------------------------------- migration: invariant 5
CASES = {
    # channel: (stack ranks, target, target content rank, agents, target mix)
    "task→agent": ({"context": 3, "agent": 5}, "context", "agent", ["ann", "bob"], 1.0),
    "agent→shared (one agent)": ({"agent": 3, "swarm": 5}, "agent", "swarm", ["ann"], 1.0),
    "shared→shared": ({"swarm": 3, "domain": 5}, "swarm", "domain", ["ann", "bob"], 0.5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_migration_preserves_the_function_when_the_target_rank_suffices(tokenizer, case):
    ranks, src, dst, agents, mix = CASES[case]
    k = 2
    stack = stack_of(ranks, target=dst, mix=mix)
    hive = make_hive(tokenizer, stack, agents)
    randomize_b(hive, seed=6, scale=0.2)
    core = hive.core
    keep_rank(core, dst, ranks[dst] - k)  # target: content of the source's rank, room for k more
    assert ranks[dst] >= ranks[src] + k
    levels = None if stack.get(src).scope == "task" else persistent_levels(stack)
    prompts, rows = PROMPTS * len(agents), [a for a in agents for _ in PROMPTS]
    before = hive.logits(prompts, rows, levels)
    without_src = hive.logits(prompts, rows, [lv for lv in (levels or stack.names()) if lv != src])
    slots = sorted({core.slot_of(src, a) for a in agents})
    src_before = {s: dense(core, src, s) for s in slots}

    records = migrate(core, src, dst, slots, k)

    after = hive.logits(prompts, rows, levels)
    assert float((before - without_src).abs().max()) > 1e-2  # the source level matters
    assert float((after - before).abs().max()) < 1e-4, case
    assert [r["slot"] for r in records] == slots and all(r["accepted"] for r in records)
    assert all(0.0 <= r["truncation"] < 1e-5 for r in records)
    # the source lost exactly its dominant part; the target gained it (scaled by mix_src / mix_dst)
    for s in slots:
        now = dense(core, src, s)
        for p, m in src_before[s].items():
            torch.testing.assert_close(now[p], m - top_k(m, k), rtol=0, atol=2e-6)
        norm = frob({p: top_k(m, k) for p, m in src_before[s].items()})
        assert records[slots.index(s)]["norm"] == pytest.approx(norm, rel=1e-4)


def test_a_short_target_rank_reports_the_truncation_it_could_not_fit(tokenizer):
    """context (rank 2) → agent (rank 2, full): the rank-4 sum is cut to rank 2; the error is what was cut."""
    k = 2
    hive = make_hive(tokenizer, stack_of({"context": 2, "agent": 2}), ["ann", "bob"])
    randomize_b(hive, seed=8, scale=0.2)
    core = hive.core
    slots = [0, 1]
    src_before = {s: dense(core, "context", s) for s in slots}
    dst_before = {s: dense(core, "agent", s) for s in slots}
    before = hive.logits(PROMPTS * 2, ["ann", "ann", "bob", "bob"])

    records = migrate(core, "context", "agent", slots, k)

    after = hive.logits(PROMPTS * 2, ["ann", "ann", "bob", "bob"])
    for s, rec in zip(slots, records, strict=True):
        want = {p: dst_before[s][p] + top_k(m, k) for p, m in src_before[s].items()}  # rank 4
        cut = math.sqrt(
            sum(float(torch.linalg.svdvals(m)[2:].square().sum()) for m in want.values())
        )
        assert cut > 1e-3
        assert rec["truncation"] == pytest.approx(cut, rel=1e-3)
        got = dense(core, "agent", s)
        assert frob({p: got[p] - want[p] for p in want}) == pytest.approx(cut, rel=1e-3)
        for p, m in want.items():  # the target holds the best rank-2 approximation of the sum
            torch.testing.assert_close(got[p], top_k(m, 2), rtol=0, atol=1e-5)
    assert float((after - before).abs().max()) > 1e-4  # the function changed: it did not fit


def test_in_a_tiny_run_the_truncation_lands_in_the_ledger(base_dir, tmp_path):
    over = {
        "ticks": 3,
        "mechanisms.consolidation.every": 1,
        "mechanisms.consolidation.checks": 1,
        "mechanisms.consolidation.threshold": 0.01,
    }
    runs.start(tiny_config(base_dir, [f"{k}={v}" for k, v in over.items()]), tmp_path / "run")
    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        events = ledger.events("mechanism:bandwidth")
    migrations = [m for e in events for m in e["detail"]["migrations"]]
    assert migrations, "no migration in the run"
    assert all(
        m["accepted"] and math.isfinite(m["truncation"]) and m["truncation"] >= 0
        for m in migrations
    )
    # every level of the tiny stack has rank 2 = k: a non-empty target cannot hold its sum exactly
    assert any(m["truncation"] > 0 for m in migrations)
    assert {m["channel"] for m in migrations} <= {"context→agent", "agent→swarm"}
