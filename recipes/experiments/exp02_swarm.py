"""Experiment 2 (seed 004): swarm communication, 3–5 agents on different task types, transfer through the swarm level.

    python recipes/experiments/exp02_swarm.py --size small --out runs/exp02-small
    python recipes/experiments/exp02_swarm.py --size full --out runs/exp02-full     # one GPU, embedded model

``agents`` agents share one swarm level; agent i works task type i mod 4 of the demo slice. Each
tick every agent takes one real learning step on its own agent level on ``batch`` support examples
of its task and, from the same backward, its exact gradient on the swarm level
(``Hive.learn_and_propose``); the library's ``Mean`` aggregates the proposals and the swarm level's
optimizer steps with the aggregate (``Hive.apply_update``). Two systems on the same draws and seed:

    A  control: isolated agents, no swarm proposal applied (the swarm level stays at its start)
    B  swarm: the aggregate applied every tick

Measured on held-out examples (answer NLL summed per example), each agent with its own persistent
view (swarm + agent levels): gain = loss before − loss after. **Transfer efficiency** of a task type
= the mean gain on it of the agents that never trained on it ÷ the mean gain of its trainers; over all
types, the ratio of the two means over (agent, type) pairs. Also: time to convergence (first
evaluation reaching ``converged`` × the final non-trainers' gain) and diversity preservation (mean
pairwise cosine of the agents' agent-level ΔW; 1 − it is the diversity kept).
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

from lorahive.mechanisms.aggregation import Mean, Proposal  # noqa: E402
from lorahive.suites.demo import load_demo_suite  # noqa: E402

SYSTEMS = ("A: isolated", "B: swarm")
CRITERION = (
    "issue 13: transfer efficiency ≥ 0.9 with the swarm — the agents' gain on task types only other agents trained on, "
    "through the swarm level, at least 0.9 of the trainers' own gain — and above the isolated control's; spec's other "
    "metrics (time to convergence, diversity preservation) reported"
)
VIEW = ["swarm", "agent"]


def losses(hive: Any, suite: dict[str, Any], agents: list[str], n: int) -> list[list[float]]:
    """Held-out answer NLL, ``[agent][task]``, each agent with its swarm and agent levels."""
    rows = [(a, p, ans) for a in agents for t in c.TASKS for p, ans in suite[t].test[:n]]
    nll = hive.row_nll(rows, levels=VIEW)
    return [[float(x) for x in r] for r in nll.view(len(agents), len(c.TASKS), n).mean(2)]


def diversity(hive: Any, agents: list[str]) -> float:
    """Mean pairwise cosine of the agents' agent-level ΔW (every module's B·A, flattened)."""
    idx = hive.core.index([hive.core.slot_of("agent", a) for a in agents])
    with torch.no_grad():
        flat = torch.cat([(bank.B.index_select(0, idx) @ bank.A.index_select(0, idx)).flatten(1).float() for bank in hive.core.banks("agent")], 1)
    unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = unit @ unit.T
    k = len(agents)
    return float((cos.sum() - cos.diagonal().sum()) / (k * (k - 1)))


def efficiency(gain: list[list[float]], tasks: list[str]) -> dict[str, Any]:
    """Per task type and overall: non-trainers' mean gain ÷ trainers' mean gain (None where trainers gained nothing)."""
    own, other, per = [], [], {}
    for j, t in enumerate(c.TASKS):
        tr = [gain[i][j] for i, s in enumerate(tasks) if s == t]
        nt = [gain[i][j] for i, s in enumerate(tasks) if s != t]
        if not tr:
            continue
        own += tr
        other += nt
        mt, mn = statistics.fmean(tr), statistics.fmean(nt)
        per[t] = {"trainers": mt, "others": mn, "efficiency": mn / mt if mt > 0 else None}
    mt, mn = statistics.fmean(own), statistics.fmean(other)
    return {"per_task": per, "trainers_gain": mt, "others_gain": mn, "efficiency": mn / mt if mt > 0 else None}


def simulate(base: str, spec: dict[str, Any], system: str, seed: int) -> dict[str, Any]:
    agents = [f"agent{i}" for i in range(spec["agents"])]
    tasks = [c.TASKS[i % len(c.TASKS)] for i in range(spec["agents"])]
    levels = c.stack()
    levels = type(levels)(levels=tuple(lv.model_copy(update={"lr": spec["swarm_lr"] if lv.name == "swarm" else spec["agent_lr"]}) for lv in levels.levels))
    hive = c.make_hive(base, agents, levels, seed=seed)
    suite = load_demo_suite(c.TASKS)
    rng = random.Random(seed)
    before = losses(hive, suite, agents, spec["eval"])
    agg = Mean()
    curve: list[dict[str, Any]] = []
    for tick in range(1, spec["ticks"] + 1):
        examples = {a: rng.sample(suite[t].train, spec["batch"]) for a, t in zip(agents, tasks, strict=True)}
        _, grads = hive.learn_and_propose(examples, level="swarm", levels=["agent"])
        res = agg.aggregate(tick, [Proposal(a, "swarm", tick, g) for a, g in grads.items()])
        if system.startswith("B") and res.update is not None:
            hive.apply_update("swarm", res.update)
        if tick % spec["eval_every"] == 0 or tick == spec["ticks"]:
            now = losses(hive, suite, agents, spec["eval"])
            gain = [[b - x for b, x in zip(rb, rn, strict=True)] for rb, rn in zip(before, now, strict=True)]
            e = efficiency(gain, tasks)
            curve.append({"tick": tick, "trainers_gain": e["trainers_gain"], "others_gain": e["others_gain"]})
    final = curve[-1]["others_gain"]
    reached = next((p["tick"] for p in curve if final > 0 and p["others_gain"] >= spec["converged"] * final), None)
    return {
        "tasks": tasks, "before": before, "after": now, "gain": gain, **efficiency(gain, tasks), "curve": curve,
        "ticks_to_convergence": reached, "agent_cosine": diversity(hive, agents),
    }  # fmt: skip


KEYS = ("efficiency", "trainers_gain", "others_gain", "ticks_to_convergence", "agent_cosine")


def judge(results: dict[str, Any]) -> tuple[str, str]:
    """The criterion in each seed (both systems on the same draws): the swarm's transfer efficiency ≥ the target (0.9)
    and above the isolated control's; undefined where a system's trainers gained nothing."""
    swarm, isolated = results["systems"][SYSTEMS[1]], results["systems"][results["control"]]
    eff = [swarm[s]["efficiency"] for s in swarm]
    eff_c = [isolated[s]["efficiency"] for s in swarm]
    target = results["target"]
    return c.judged([
        (f"swarm's transfer efficiency {c.over_seeds(eff)} ≥ {target}", [None if x is None else x >= target for x in eff]),
        (f"efficiency above the isolated control's {c.over_seeds(eff_c)}", [None if x is None or y is None else x > y for x, y in zip(eff, eff_c, strict=True)]),
    ])  # fmt: skip


def run(size: str, out: Path, seeds: list[int], base: str | None = None) -> dict[str, Any]:
    r = c.begin(2, size, seeds, base)
    per: dict[str, dict[str, Any]] = {s: {str(seed): simulate(r.base, r.spec, s, seed) for seed in c.each(r, seeds, s)} for s in SYSTEMS}
    summary: dict[str, Any] = {}
    for name, runs in per.items():
        summary[name] = c.summarise(runs, KEYS) | {"defined": sum(x["efficiency"] is not None for x in runs.values())}
    # the part of the others' gain the swarm level carried: B's others' gain above the isolated control's, ÷ B's trainers' gain
    a, b = per[SYSTEMS[0]], per[SYSTEMS[1]]
    through = {s: (b[s]["others_gain"] - a[s]["others_gain"]) / b[s]["trainers_gain"] for s in b if b[s]["trainers_gain"] > 0}
    results = {
        "systems": per, "summary": summary, "through_swarm": {"per_seed": through, **(c.mean_spread(list(through.values())) if through else {})},
        "control": "A: isolated", "target": 0.9,
    }  # fmt: skip
    return c.finish(r, out, results, CRITERION, markdown, plot, judge)


def markdown(m: dict[str, Any]) -> str:
    t = m["through_swarm"]
    columns = [("transfer efficiency (runs defined)", lambda s: c.cell(s["efficiency"]) + f" ({s['defined']})", 3), ("trainers' gain", "trainers_gain", 3),
               ("others' gain", "others_gain", 3), ("ticks to convergence", "ticks_to_convergence", 1), ("agents' ΔW cosine", "agent_cosine", 3)]  # fmt: skip
    return c.report(
        m, f"{m['config']['agents']} agents, {m['config']['ticks']} ticks",
        c.summary_table(["system"], c.named(m["summary"]), columns),
        "gain: held-out answer NLL (summed per example, nats) before − after, each agent with its swarm and agent levels; "
        "transfer efficiency: others' gain on a type ÷ its trainers' gain (target ≥ 0.9).\n"
        f"Through the swarm level alone (B's others' gain above the isolated control's, ÷ B's trainers' gain): {c.fmt(t) if 'mean' in t else '–'}.",
    )


def plot(m: dict[str, Any], path: Path) -> None:
    fig, axes = c.panels()
    for name, runs in m["systems"].items():
        r = c.first(runs)
        ticks = [p["tick"] for p in r["curve"]]
        line = axes[0].plot(ticks, [p["trainers_gain"] for p in r["curve"]], "-", label=f"{name}: trainers")[0]
        axes[0].plot(ticks, [p["others_gain"] for p in r["curve"]], "--", color=line.get_color(), label=f"{name}: others")
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].set_xlabel("tick")
    axes[0].set_ylabel("held-out gain (nats, first seed)")
    axes[0].legend(fontsize=7)

    def ratio(name: str, t: str) -> float:
        runs = m["systems"][name]
        return statistics.fmean(r["per_task"][t]["others"] / max(r["per_task"][t]["trainers"], 1e-9) for r in runs.values()) if t in c.first(runs)["per_task"] else 0.0

    c.task_bars(axes[1], list(m["systems"]), c.TASKS, ratio, "transfer efficiency per task type")
    axes[1].axhline(m["target"], ls=":", color="k")
    c.save_figure(fig, path, f"Experiment 2: swarm communication ({m['size']}, {m['base']})")


if __name__ == "__main__":
    sys.exit(c.main(__doc__, run, markdown))
