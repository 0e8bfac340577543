"""Experiment 9 (seed 004): the entropy budget's homeostasis, scenarios A–D, over tasks of different complexity.

    python recipes/experiments/exp09_entropy.py --size small --out runs/exp09-small
    python recipes/experiments/exp09_entropy.py --size full --out runs/exp09-full     # one GPU, embedded model

One level, LoRA_agent, screened by the library's screening (``decay`` phase) on activity the
library's probe measures on real support rows. ``agents`` agents, agent i on task i mod 4 of the
demo slice. *Complexity* k is how many patterns the level must hold at once: in phase 1 agents
0…k−1 work every tick, in phase 2 (the new tasks) agents k…2k−1. A working agent's slot learns,
each tick, its task's local pattern plus a real minibatch deviation (``common.py``), times
``step``; an idle one learns nothing, and screening decays it. Scenarios, on the same draws:

    A  control: no entropy budget (screening alone)
    B  fixed budget       the library's EntropyBudget, band [low, high], free_target 0.5
    C  adaptive budget    B with free_target = 0.5 / (1 + ln k): optimal entropy falls as log(complexity)
                          grows (the recipe's rule, not a library option)
    D  dynamic boundaries B with the band re-centred every tick on an EMA (``drift``) of the ratio it
                          observed: [low, high] = centre · [low, high] (the recipe's rule)

Measured per scenario and complexity: the share of written patterns screened (mean and at the
end), the end state (crystallised: ≥ 95 % screened; amnesic: ≤ 5 %), forgetting (the ΔW norm the
phase-1 slots lose over phase 2, as a share), adaptation speed (ticks into phase 2 until every new
slot's leading pattern is screened), the entropy ratio at the end, and D's band centre's spread
over phase 2 (its stability).
"""

from __future__ import annotations

import math
import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402

from lorahive.config import EntropyBudgetConfig, ScreeningConfig  # noqa: E402
from lorahive.mechanisms.base import TickView  # noqa: E402
from lorahive.mechanisms.entropy_budget import EntropyBudget  # noqa: E402
from lorahive.mechanisms.screening import Screening  # noqa: E402

SCENARIOS = ("A: no budget", "B: fixed", "C: adaptive", "D: dynamic boundaries")
CRITERION = (
    "spec's hypothesis: without a budget the system drifts to an extreme (all screened or all free); a fixed budget "
    "is stable for one complexity but does not adapt; an adaptive budget keeps homeostasis at any complexity; dynamic "
    "boundaries adapt to the task complexity. Read here as: A ends crystallised or amnesic at some complexity, B–D "
    "at none; C's end entropy ratio within [low, high] at every complexity; D's band centre's spread over phase 2 "
    "below 0.1 of its mean"
)


def scenario(hive: Any, world: c.World, spec: dict[str, Any], name: str, k: int, plan: dict[str, Any]) -> dict[str, Any]:
    core = hive.core
    agents = core.agents
    slots = [core.slot_of("agent", a) for a in agents]
    core.reset("agent", slots)
    core.states["agent"].thresholds["screening"] = 1.0
    screening = Screening(ScreeningConfig(levels=["agent"], **spec["screening"]), ["agent"])
    band = EntropyBudgetConfig(enabled=True, **spec["budget"])
    free_target = 0.5 / (1.0 + math.log(k)) if name.startswith("C") else 0.5
    budget = EntropyBudget(band, screening, free_target) if not name.startswith("A") else None
    centre, centres = 1.0, []
    phase1, phase2 = list(range(k)), list(range(k, 2 * k))
    half = spec["ticks"]
    screened_share, ratios, scales = [], [], []
    adapted, norm_end1 = None, None
    for tick in range(1, 2 * half + 1):
        working = phase1 if tick <= half else phase2
        shared: dict[str, Any] = {}
        if budget is not None:
            if name.startswith("D"):
                budget.cfg = band.model_copy(update={"low": centre * band.low, "high": centre * band.high})
            act = budget.run(TickView(tick, "budget", [], (), {}, core.states, core, shared=shared))
            if act is not None and name.startswith("D"):
                centre = spec["drift"] * centre + (1 - spec["drift"]) * act.detail["levels"]["agent"]["entropy_ratio"]
                if tick > half:
                    centres.append(centre)
        core.add_deltas("agent", [slots[i] for i in working], [c.delta(world, hive, spec["step"] * plan["updates"][tick - 1][i]) for i in working])
        support = {agents[i]: plan["support"][tick - 1][i] for i in working}
        a = hive.activity(support, ["agent"])
        screening.run(TickView(tick, "decay", [], (), {}, core.states, core, shared=shared, activity=lambda levels, a=a: a))
        scr = screening.screened["agent"]
        written = [s for s, e in zip(slots, c.energy(hive, "agent", slots).tolist(), strict=True) if e > 0]
        if written:
            screened_share.append(float(scr[core.index(written)].float().mean()))
        r = screening.entropy(TickView(tick, "budget", [], (), {}, core.states, core), "agent", free_target)
        ratios.append(r)
        scales.append(core.states["agent"].thresholds.get("screening", 1.0))
        if tick == half:
            norm_end1 = c.energy(hive, "agent", [slots[i] for i in phase1]).sqrt()
        if tick > half and adapted is None and bool(scr[core.index([slots[i] for i in phase2]), 0].all()):
            adapted = tick - half
    kept = c.energy(hive, "agent", [slots[i] for i in phase1]).sqrt()
    assert norm_end1 is not None
    final = screened_share[-1] if screened_share else 0.0
    return {
        "screened_mean": statistics.fmean(screened_share) if screened_share else 0.0,
        "screened_final": final,
        "state": "crystallised" if final >= 0.95 else "amnesic" if final <= 0.05 else "balanced",
        "forgetting": float(1.0 - (kept / norm_end1.clamp_min(1e-12)).mean()),
        "adaptation_ticks": adapted,
        "entropy_final": ratios[-1],
        "scale_final": scales[-1],
        "free_target": free_target,
        "band_centre_spread": (statistics.pstdev(centres) / statistics.fmean(centres)) if len(centres) > 1 else None,
        "curve": {"screened": screened_share, "entropy": ratios, "scale": scales},
    }


def plan_draws(hive: Any, world: c.World, spec: dict[str, Any], seed: int) -> dict[str, Any]:
    """Per tick, each agent's update (its task's local pattern plus real minibatch noise) and support rows."""
    rng = random.Random(seed)
    agents = hive.core.agents
    tasks = [c.TASKS[i % len(c.TASKS)] for i in range(len(agents))]
    pool = {t: [c.noise(hive, world, t, rng, spec["batch"]) for _ in range(spec["pool"])] for t in c.TASKS}
    updates, support = [], []
    for _ in range(2 * spec["ticks"]):
        updates.append([world.local[tasks[i]] + spec["noise"] * rng.choice(pool[tasks[i]]) for i in range(len(agents))])
        support.append([rng.sample(world.suite[tasks[i]].train, spec["batch"]) for i in range(len(agents))])
    return {"updates": updates, "support": support}


KEYS = ("screened_mean", "screened_final", "forgetting", "adaptation_ticks", "entropy_final", "scale_final", "band_centre_spread")


def run(size: str, out: Path, seeds: list[int], base: str | None = None) -> dict[str, Any]:
    r = c.begin(9, size, seeds, base)
    spec = r.spec
    hive = c.make_hive(r.base, [f"agent{i}" for i in range(spec["agents"])])
    world = c.build_world(hive, spec["train"])
    per: dict[str, dict[str, dict[str, Any]]] = {s: {str(k): {} for k in spec["complexity"]} for s in SCENARIOS}
    for seed in c.each(r, seeds):
        plan = plan_draws(hive, world, spec, seed)
        for name in SCENARIOS:
            for k in spec["complexity"]:
                per[name][str(k)][str(seed)] = scenario(hive, world, spec, name, k, plan)
    summary = {
        name: {k: c.summarise(runs, KEYS) | {"states": [x["state"] for x in runs.values()], "adapted_runs": sum(x["adaptation_ticks"] is not None for x in runs.values())} for k, runs in by_k.items()}
        for name, by_k in per.items()
    }
    band = [spec["budget"]["low"], spec["budget"]["high"]]
    return c.finish(r, out, {"scenarios": per, "summary": summary, "control": "A: no budget", "band": band}, CRITERION, markdown, plot, judge)


def judge(results: dict[str, Any]) -> tuple[str, str]:
    """The criterion per seed: A extreme at some k, B–D balanced at every k, C's end ratio in the band at every k,
    D's band centre spread < 0.1 at every k; every part in every seed (seeds disagreeing or a ratio undefined: inconclusive)."""
    per, (low, high) = results["scenarios"], results["band"]
    by_seed = {name: {s: {k: runs[s] for k, runs in by_k.items()} for s in c.first(by_k)} for name, by_k in per.items()}
    a, adaptive, dynamic = by_seed["A: no budget"], by_seed["C: adaptive"], by_seed["D: dynamic boundaries"]
    seeds = list(a)
    extreme = [any(x["state"] != "balanced" for x in a[s].values()) for s in seeds]
    bad = {s: [f"{n[0]} k={k} {x['state']}" for n in SCENARIOS[1:] for k, x in by_seed[n][s].items() if x["state"] != "balanced"] for s in seeds}
    ratios = [x["entropy_final"] for s in seeds for x in adaptive[s].values()]
    in_band = [None if any(x["entropy_final"] is None for x in adaptive[s].values()) else all(low <= x["entropy_final"] <= high for x in adaptive[s].values()) for s in seeds]
    spreads = [x["band_centre_spread"] for s in seeds for x in dynamic[s].values()]
    steady = [None if any(x["band_centre_spread"] is None for x in dynamic[s].values()) else all(x["band_centre_spread"] < 0.1 for x in dynamic[s].values()) for s in seeds]
    parts = [extreme, [not bad[s] for s in seeds], in_band, steady]
    n = len(seeds)

    def span(xs: list[float | None]) -> str:
        live = [x for x in xs if x is not None]
        return ("undefined" if not live else f"{min(live):.3f}–{max(live):.3f}") + (f", undefined in {len(xs) - len(live)} runs" if live and len(live) < len(xs) else "")

    extremes = sorted({e for s in seeds for e in bad[s]})
    why = (
        f"A ends crystallised or amnesic at some k in {sum(extreme)}/{n} seeds; B–D balanced at every k in {sum(not bad[s] for s in seeds)}/{n} seeds"
        + (f" (not: {', '.join(extremes[:4])}{', …' if len(extremes) > 4 else ''})" if extremes else "")
        + f"; C's end entropy ratio in [{low:g}, {high:g}] at every k in {sum(x is True for x in in_band)}/{n} seeds (range {span(ratios)})"
        + f"; D's band centre spread < 0.1 at every k in {sum(x is True for x in steady)}/{n} seeds (range {span(spreads)})"
    )
    return c.seedwise(parts), why


def markdown(m: dict[str, Any]) -> str:
    def states(s: dict[str, Any]) -> str:
        return ", ".join(f"{n} {st}" for st in ("crystallised", "balanced", "amnesic") if (n := s["states"].count(st)))

    columns = [("screened (mean)", "screened_mean", 3), ("screened (end)", "screened_final", 3), ("end states", states, 0), ("forgetting", "forgetting", 3),
               ("adaptation (ticks)", lambda s: c.cell(s["adaptation_ticks"], 1) + f" ({s['adapted_runs']} runs)", 1), ("entropy ratio (end)", "entropy_final", 3),
               ("threshold scale (end)", "scale_final", 3), ("band centre spread", "band_centre_spread", 3)]  # fmt: skip
    entries = [([name, k], s) for name, by_k in m["summary"].items() for k, s in by_k.items()]
    return c.report(
        m, f"{m['config']['agents']} agents", c.summary_table(["scenario", "k"], entries, columns),
        "k: patterns the level holds at once (agents working per phase); forgetting: share of ΔW norm the phase-1 slots lose "
        "over phase 2; adaptation: ticks into phase 2 until every new slot's leading pattern is screened (runs in which it happened).",
    )  # fmt: skip


def plot(m: dict[str, Any], path: Path) -> None:
    ks = list(c.first(m["scenarios"]))
    fig, axes = c.panels(len(ks), (4, 3), rows=2)
    for j, k in enumerate(ks):
        first = {name: c.first(by_k[k])["curve"] for name, by_k in m["scenarios"].items()}
        c.lines(axes[0][j], {n: cv["screened"] for n, cv in first.items()}, "", "share of patterns screened", legend=7 if j == 0 else None)
        c.lines(axes[1][j], {n: cv["entropy"] for n, cv in first.items()}, "tick (phase 2 from the middle)", "entropy ratio", legend=None)
        axes[0][j].set_title(f"k = {k} (first seed)", fontsize=9)
    c.save_figure(fig, path, f"Experiment 9: entropy budget ({m['size']}, {m['base']})")


if __name__ == "__main__":
    sys.exit(c.main(__doc__, run, markdown))
