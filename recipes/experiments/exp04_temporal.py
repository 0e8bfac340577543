"""Experiment 4 (seed 004): emergent temporal scales, a constant and an episodic agent over a shared swarm level.

    python recipes/experiments/exp04_temporal.py --size small --out runs/exp04-small
    python recipes/experiments/exp04_temporal.py --size full --out runs/exp04-full     # one GPU, embedded model

Two levels over the base: ``swarm`` (shared: one slot for every agent) and ``agent`` (one slot per
agent), both at base inertia β. Two agents: ``constant`` works agnews every tick, ``episodic`` works
yelp on ``p · ticks`` ticks drawn at random (the same work ticks in every scenario of a seed). Each tick the
library's ``EmergentInertia`` runs in its ``draw`` phase on the tick's support rows, then the
working agents take ``fast_steps`` real fast steps (``Hive.learn``) on them, every level's step
size ``lr·(1 − inertia)`` as the mechanism set it. Scenarios, on the same draws:

    constant alone      only the constant agent works
    episodic alone      only the episodic agent works
    both                the spec's setup: both work, sharing the swarm level
    control: inertia off  both work, no emergent inertia (every level stays at β)

Measured per scenario: each level's inertia and step size per tick; their mean over the second half
of the run; the swarm level's temporal scale ``1 / (1 − inertia)`` (ticks over which a step's
change persists); the held-out answer NLL of each working agent's task at the end.
"""

from __future__ import annotations

import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402
import torch  # noqa: E402

from lorahive import LevelSpec, StackSpec  # noqa: E402
from lorahive.config import InertiaConfig  # noqa: E402
from lorahive.mechanisms.base import TickView  # noqa: E402
from lorahive.mechanisms.inertia import EmergentInertia  # noqa: E402
from lorahive.suites.demo import load_demo_suite  # noqa: E402

AGENTS = {"constant": "agnews", "episodic": "yelp"}
SCENARIOS = {
    "constant alone": ("constant",),
    "episodic alone": ("episodic",),
    "both": ("constant", "episodic"),
    "control: inertia off": ("constant", "episodic"),
}
LEVELS = ("swarm", "agent")
CRITERION = (
    "spec's hypothesis: a constant agent gives high interaction density and the swarm level grows heavier; an episodic "
    "one gives low density and the swarm stays light; the temporal scale emerges, not set by the designer. Read as: in "
    "every seed the swarm's second-half mean inertia is higher with the constant agent alone than with the episodic "
    "agent alone, 'both' is at least the constant agent's, and the control stays at β"
)


def stack(spec: dict[str, Any]) -> StackSpec:
    r, b = spec["rank"], spec["beta"]
    return StackSpec(
        levels=(
            LevelSpec(name="swarm", rank=r, alpha=r, scope="shared", inertia=b, lr=spec["lr"]),
            LevelSpec(name="agent", rank=r, alpha=r, scope="agent", inertia=b, lr=spec["lr"]),
        )
    )


def plan_draws(suite: dict[str, Any], spec: dict[str, Any], seed: int) -> dict[str, Any]:
    """Per tick: whether the episodic agent works (``p · ticks`` ticks drawn at random), and each agent's support rows."""
    rng = random.Random(seed)
    on = set(rng.sample(range(spec["ticks"]), round(spec["p"] * spec["ticks"])))
    works = [t in on for t in range(spec["ticks"])]
    support = [{a: rng.sample(suite[t].train, spec["batch"]) for a, t in AGENTS.items()} for _ in range(spec["ticks"])]
    return {"episodic_works": works, "support": support}


def scenario(hive: Any, suite: dict[str, Any], spec: dict[str, Any], name: str, plan: dict[str, Any], seed: int) -> dict[str, Any]:
    core = hive.core
    for lv in LEVELS:
        core.reset(lv, list(range(core.n_slots(lv))))
        core.states[lv].inertia = spec["beta"]
    torch.manual_seed(seed)
    mech = None
    if not name.startswith("control"):
        mech = EmergentInertia(InertiaConfig(enabled=True, **spec["inertia"]), list(LEVELS), dict.fromkeys(LEVELS, spec["beta"]))
    curve: dict[str, list[float]] = {f"{lv}_{k}": [] for lv in LEVELS for k in ("inertia", "step")}
    worked = dict.fromkeys(AGENTS, 0)
    for tick in range(1, spec["ticks"] + 1):
        working = [a for a in SCENARIOS[name] if a == "constant" or plan["episodic_works"][tick - 1]]
        support = {a: plan["support"][tick - 1][a] for a in working}
        if mech is not None:
            mech.run(TickView(tick, "draw", [], (), {}, core.states, core, support=dict(support)))
        for lv in LEVELS:
            curve[f"{lv}_inertia"].append(core.states[lv].inertia)
            curve[f"{lv}_step"].append(core.states[lv].step_size)
        if support:
            hive.learn(support, steps=spec["fast_steps"])
        for a in working:
            worked[a] += 1
    half = spec["ticks"] // 2
    second = {k: statistics.fmean(v[half:]) for k, v in curve.items()}
    rows = [(a, p, ans) for a in SCENARIOS[name] for p, ans in suite[AGENTS[a]].test[: spec["eval"]]]
    nll = hive.row_nll(rows, levels=list(LEVELS)).view(len(SCENARIOS[name]), spec["eval"]).mean(1)
    return {
        "swarm_inertia": second["swarm_inertia"],
        "agent_inertia": second["agent_inertia"],
        "swarm_step": second["swarm_step"],
        "swarm_scale": 1.0 / max(1.0 - second["swarm_inertia"], 1e-12),
        "ticks_worked": worked,
        "loss": {a: float(x) for a, x in zip(SCENARIOS[name], nll, strict=True)},
        "curve": curve,
    }


KEYS = ("swarm_inertia", "agent_inertia", "swarm_step", "swarm_scale")


def judge(results: dict[str, Any]) -> tuple[str, str]:
    """The criterion in each seed (the scenarios on the same draws): the swarm's second-half mean inertia with the
    constant agent alone > with the episodic agent alone, 'both' ≥ the constant agent's, the control's at β every tick."""
    sc, beta = results["scenarios"], results["beta"]
    seeds = list(sc["both"])
    const, epis, both = ([sc[n][s]["swarm_inertia"] for s in seeds] for n in ("constant alone", "episodic alone", "both"))
    off = [max(abs(x - beta) for x in sc[results["control"]][s]["curve"]["swarm_inertia"]) for s in seeds]
    return c.judged([
        (f"swarm inertia, constant alone {c.over_seeds(const)} > episodic alone {c.over_seeds(epis)}", [x > y for x, y in zip(const, epis, strict=True)]),
        (f"both {c.over_seeds(both)} ≥ constant alone", [x >= y for x, y in zip(both, const, strict=True)]),
        (f"control's swarm inertia at β {beta} (largest departure {max(off):.2g})", [x <= 1e-9 for x in off]),
    ])  # fmt: skip


def run(size: str, out: Path, seeds: list[int], base: str | None = None) -> dict[str, Any]:
    r = c.begin(4, size, seeds, base)
    hive = c.make_hive(r.base, list(AGENTS), levels=stack(r.spec))
    suite = load_demo_suite(c.TASKS)
    per: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in SCENARIOS}
    for seed in c.each(r, seeds):
        plan = plan_draws(suite, r.spec, seed)
        for name in SCENARIOS:
            per[name][str(seed)] = scenario(hive, suite, r.spec, name, plan, seed)
    summary = {name: c.summarise(runs, KEYS) for name, runs in per.items()}
    return c.finish(r, out, {"scenarios": per, "summary": summary, "control": "control: inertia off", "beta": r.spec["beta"]}, CRITERION, markdown, plot, judge)


def markdown(m: dict[str, Any]) -> str:
    def nll(s: dict[str, Any], name: str) -> str:
        losses = [r["loss"] for r in m["scenarios"][name].values()]
        return ", ".join(f"{a} {c.fmt(c.mean_spread([x[a] for x in losses]), 2)}" for a in losses[0])

    columns = [("swarm inertia", "swarm_inertia", 3), ("agent inertia", "agent_inertia", 3), ("swarm step size", "swarm_step", 5), ("swarm temporal scale (ticks)", "swarm_scale", 2)]
    entries = [([name], s | {"nll": nll(s, name)}) for name, s in m["summary"].items()]
    cfg = m["config"]
    return c.report(
        m, f"β {cfg['beta']}, k {cfg['inertia']['k']}, episodic p {cfg['p']}, {cfg['ticks']} ticks",
        c.summary_table(["scenario"], entries, [*columns, ("held-out NLL (end)", lambda s: s["nll"], 2)]),
        "Inertia and step size: mean over the run's second half; temporal scale 1 / (1 − inertia).",
    )


def plot(m: dict[str, Any], path: Path) -> None:
    fig, axes = c.panels()
    for ax, lv in zip(axes, ("swarm", "agent"), strict=True):
        c.lines(ax, {name: c.first(runs)["curve"][f"{lv}_inertia"] for name, runs in m["scenarios"].items()}, "tick (first seed)", f"{lv} level inertia", legend=7 if lv == "swarm" else None)
    c.save_figure(fig, path, f"Experiment 4: emergent temporal scales ({m['size']}, {m['base']})")


if __name__ == "__main__":
    sys.exit(c.main(__doc__, run, markdown))
