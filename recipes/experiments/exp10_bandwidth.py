"""Experiment 10 (seed 004): bandwidth against a migration avalanche, scenarios A–D.

    python recipes/experiments/exp10_bandwidth.py --size small --out runs/exp10-small
    python recipes/experiments/exp10_bandwidth.py --size full --out runs/exp10-full     # one GPU, embedded model

The avalanche: ``patterns`` agents (50) each grow a pattern in their context slot over the
first ``warmup`` ticks, so that consolidation (the library's, ``every``/``checks`` of the
config) finds them all stable at the same check and hands them to the context → agent channel
at once. Patterns are built from the demo tasks (``common.py``): agent i's is its task's
(i mod 4) local pattern plus a fixed real minibatch deviation, learned each tick beside fresh
minibatch noise of a weight drawn per pattern (autocorrelation ≈ 0.9–0.99); the ``critical`` (3) agents' is the universal
pattern, shared by every task, learned almost noise-free (autocorrelation above the bypass
level). After the avalanche nothing more is learned or detected; the ticks that follow only
drain the queue. Scenarios, on the same draws:

    A  no bandwidth limit          everything ready moves at once (``Bandwidth(limited=False)``)
    B  fixed bandwidth             budget ``fraction`` of the target's parameters per tick, whatever its inertia; no bypass
    C  adaptive bandwidth          the library's budget, ``fraction / inertia_target``; no bypass (``critical: 1.0``)
    D  C + emergency bypass        the library's defaults: autocorrelation ≥ ``critical`` bypasses the queue

Measured per scenario: the largest share of everything the target level received that arrived
in one tick, and the largest one-tick change of the target level's held-out loss (its
stability); ticks until the queue is empty (time to stabilization); the critical patterns'
wait (latency); migrated and dropped (stale) patterns and their autocorrelation (filtering).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402

from lorahive.config import BandwidthConfig, ConsolidationConfig  # noqa: E402
from lorahive.mechanisms.bandwidth import Bandwidth  # noqa: E402
from lorahive.mechanisms.base import TickView  # noqa: E402
from lorahive.mechanisms.consolidation import Consolidation  # noqa: E402

SCENARIOS = ("A: no limit", "B: fixed", "C: adaptive", "D: adaptive + bypass")
CRITERION = (
    "spec's expectation: A — the target level collapses (too many changes at once); B — the queue protects it but "
    "important patterns get stuck; C — the bandwidth widens for fast levels and narrows for slow ones; D — critical "
    "patterns migrate at once, the rest queue. Read here as: A's largest one-tick share of the target's arrivals is "
    "1 and B–D's well below; D's critical latency is 0 ticks and below B's and C's. C against B differs only by the "
    "target's inertia (1/0.5 = 2× here): the widening across levels is not exercised by one channel"
)


def bandwidth(name: str, spec: dict[str, Any], cons: Consolidation) -> Bandwidth:
    cfg = BandwidthConfig(**spec["bandwidth"])
    if name.startswith("A"):
        return Bandwidth(cfg, cons, rank=1, limited=False)
    if name.startswith("D"):
        return Bandwidth(cfg, cons, rank=1)
    bw = Bandwidth(cfg.model_copy(update={"critical": 1.0}), cons, rank=1)
    if name.startswith("B"):
        bw.budget = lambda view, target: cfg.fraction  # type: ignore[method-assign]  # the control: no 1/inertia
    return bw


def scenario(hive: Any, world: c.World, spec: dict[str, Any], name: str, plan: dict[str, Any]) -> dict[str, Any]:
    core = hive.core
    agents = core.agents
    ctx = [core.slot_of("context", a) for a in agents]
    tasks = [c.TASKS[i % len(c.TASKS)] for i in range(len(agents))]
    core.reset("context", ctx)
    core.reset("agent", [core.slot_of("agent", a) for a in agents])
    cons = Consolidation(ConsolidationConfig(**spec["consolidation"]), [("context", "agent")])
    bw = bandwidth(name, spec, cons)
    critical = set(ctx[: spec["critical"]])
    ready_at_once, migrated, dropped, curve = 0, [], 0, []
    loss = sum(c.task_loss(hive, agents, tasks, world, ["agent"], spec["eval"])) / len(agents)
    arrived: list[float] = []
    before = c.energy(hive, "agent", ctx)
    last = spec["warmup"] + spec["horizon"]
    for tick in range(1, last + 1):
        shared: dict[str, Any] = {}
        if tick <= spec["warmup"]:
            core.add_deltas("context", ctx, [c.delta(world, hive, spec["step"] * u) for u in plan["updates"][tick - 1]])
            view = TickView(tick, "detect", [], (), {}, core.states, core, shared=shared)
            cons.run(view)
            ready_at_once = max(ready_at_once, len(shared.get("ready", [])))
        moved_now = 0
        for phase in ("migrate", "drain"):
            act = bw.run(TickView(tick, phase, [], (), {}, core.states, core, shared=shared))
            if act is not None:
                done = [m for m in act.detail["migrations"] if m["accepted"]]
                moved_now += len(done)
                migrated += [m | {"tick": tick, "critical": m["slot"] in critical} for m in done]
                dropped += act.detail.get("dropped", 0)
        now = c.energy(hive, "agent", ctx)
        arrived.append(float((now - before).abs().sum()))
        before = now
        if moved_now:
            new = sum(c.task_loss(hive, agents, tasks, world, ["agent"], spec["eval"])) / len(agents)
            curve.append({"tick": tick, "moved": moved_now, "loss": new, "change": new - loss})
            loss = new
    total = sum(arrived)
    crit = [m["waited"] for m in migrated if m["critical"]]
    return {
        "ready_at_once": ready_at_once,
        "migrated": len(migrated),
        "dropped": dropped,
        "bypassed": sum(m["bypass"] for m in migrated),
        "max_tick_share": max(arrived) / total if total > 0 else 0.0,
        "max_loss_change": max((abs(p["change"]) for p in curve), default=0.0),
        "time_to_stable": max((m["tick"] for m in migrated), default=spec["warmup"]) - spec["warmup"],
        "critical_latency": sum(crit) / len(crit) if crit else None,
        "critical_migrated": len(crit),
        "autocorr_migrated": sum(m["autocorr"] for m in migrated) / len(migrated) if migrated else None,
        "final_loss": loss,
        "budget": bw.budget(TickView(last, "drain", [], (), {}, core.states, core), "agent") if bw.limited else None,
        "curve": curve,
    }


def plan_draws(hive: Any, world: c.World, spec: dict[str, Any], seed: int) -> dict[str, Any]:
    """Per warm-up tick, each agent's context update: its pattern plus fresh real minibatch noise."""
    rng = random.Random(seed)
    pool = {t: [c.noise(hive, world, t, rng, spec["batch"]) for _ in range(spec["pool"])] for t in c.TASKS}
    n, k = spec["patterns"], spec["critical"]
    tasks = [c.TASKS[i % len(c.TASKS)] for i in range(n)]
    bases = []
    for i, t in enumerate(tasks):
        u = world.universal if i < k else world.local[t] + spec["mix"] * rng.choice(pool[t])
        bases.append(u / u.norm())
    lo, hi = spec["jitter"]
    jitter = [spec["critical_jitter"] if i < k else rng.uniform(lo, hi) for i in range(n)]
    updates = [[b + j * rng.choice(pool[t]) for b, j, t in zip(bases, jitter, tasks, strict=True)] for _ in range(spec["warmup"])]
    return {"updates": updates}


KEYS = ("ready_at_once", "migrated", "dropped", "bypassed", "max_tick_share", "max_loss_change", "time_to_stable", "critical_latency", "critical_migrated", "autocorr_migrated", "final_loss")


def run(size: str, out: Path, seeds: list[int], base: str | None = None) -> dict[str, Any]:
    r = c.begin(10, size, seeds, base)
    hive = c.make_hive(r.base, [f"agent{i}" for i in range(r.spec["patterns"])])
    world = c.build_world(hive, r.spec["train"])
    per_seed: dict[str, dict[str, Any]] = {s: {} for s in SCENARIOS}
    for seed in c.each(r, seeds):
        plan = plan_draws(hive, world, r.spec, seed)
        for name in SCENARIOS:
            per_seed[name][str(seed)] = scenario(hive, world, r.spec, name, plan)
    summary = {name: c.summarise(runs, KEYS) | {"budget": c.first(runs)["budget"]} for name, runs in per_seed.items()}
    return c.finish(r, out, {"scenarios": per_seed, "summary": summary, "control": "A: no limit"}, CRITERION, markdown, plot, judge)


WELL_BELOW = 0.5  # "well below" A's share of 1: at most half of the target's arrivals in one tick


def judge(results: dict[str, Any]) -> tuple[str, str]:
    """The criterion per seed: A's largest one-tick share is 1 and B–D's ≤ ``WELL_BELOW``; D's critical latency is 0 and
    below B's and C's (a critical pattern B or C never migrated waits longer than any; D's never migrating: undefined)."""
    per = results["scenarios"]
    a, fixed, adaptive, bypass = (per[n] for n in SCENARIOS)
    seeds = list(a)
    collapse = [a[s]["max_tick_share"] >= 1.0 - 1e-6 and all(per[n][s]["max_tick_share"] <= WELL_BELOW for n in SCENARIOS[1:]) for s in seeds]

    def waited(x: float | None) -> bool:
        return x is None or x > 0

    first = [None if (w := bypass[s]["critical_latency"]) is None else w == 0 and waited(fixed[s]["critical_latency"]) and waited(adaptive[s]["critical_latency"]) for s in seeds]

    def shares(name: str) -> str:
        return "/".join(f"{per[name][s]['max_tick_share']:.3f}" for s in seeds)

    def waits(runs: dict[str, Any]) -> str:
        return "/".join("never" if runs[s]["critical_latency"] is None else f"{runs[s]['critical_latency']:.1f}" for s in seeds)

    why = (
        f"largest one-tick share (per seed) A {shares(SCENARIOS[0])}, B {shares(SCENARIOS[1])}, C {shares(SCENARIOS[2])}, D {shares(SCENARIOS[3])} "
        f"(A = 1 and B–D ≤ {WELL_BELOW:g} in {sum(collapse)}/{len(seeds)} seeds); critical latency (ticks) D {waits(bypass)}, B {waits(fixed)}, C {waits(adaptive)} "
        f"(D 0 and below B's and C's in {sum(x is True for x in first)}/{len(seeds)} seeds" + (", D's undefined in some" if None in first else "") + ")"
    )
    return c.seedwise([collapse, first]), why


def markdown(m: dict[str, Any]) -> str:
    budget = ("budget / tick", lambda s: "∞" if s["budget"] is None else f"{s['budget']:.3g}", 0)
    columns = [(k, k, 3 if k in ("max_tick_share", "max_loss_change", "autocorr_migrated", "final_loss") else 1) for k in KEYS]
    return c.report(
        m, f"{m['config']['patterns']} patterns, {m['config']['critical']} critical", c.summary_table(["scenario"], c.named(m["summary"]), [budget, *columns]),
        "max_tick_share: largest share of the target level's total arrivals (ΔW energy) in one tick; "
        "max_loss_change: largest one-tick change of the agents' mean held-out loss with the agent level alone (nats); "
        "time_to_stable, critical_latency: ticks after the avalanche.",
    )  # fmt: skip


def plot(m: dict[str, Any], path: Path) -> None:
    fig, axes = c.panels()
    warm = m["config"]["warmup"]
    ticks = range(warm, warm + m["config"]["horizon"] + 1)
    moved = {name: {p["tick"]: p["moved"] for p in c.first(runs)["curve"]} for name, runs in m["scenarios"].items()}
    c.lines(axes[0], {name: [sum(v for t, v in per.items() if t <= x) for x in ticks] for name, per in moved.items()}, "tick", "patterns migrated (first seed)", start=warm)
    for name, runs in m["scenarios"].items():
        r = c.first(runs)
        axes[1].plot([warm - 1] + [p["tick"] for p in r["curve"]], [r["final_loss"] - sum(p["change"] for p in r["curve"])] + [p["loss"] for p in r["curve"]], "-o", ms=3, label=name)
    axes[1].set_xlabel("tick")
    axes[1].set_ylabel("mean held-out loss, agent level alone")
    c.save_figure(fig, path, f"Experiment 10: migration avalanche ({m['size']}, {m['base']})")


if __name__ == "__main__":
    sys.exit(c.main(__doc__, run, markdown))
