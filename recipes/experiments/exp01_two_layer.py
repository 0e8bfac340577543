"""Experiment 1 (seed 004): the two-layer proof of concept, a slow level and a fast one against one level alone.

    python recipes/experiments/exp01_two_layer.py --size small --out runs/exp01-small
    python recipes/experiments/exp01_two_layer.py --size full --out runs/exp01-full     # one GPU, embedded model

Base model + ``agent`` (slow: base inertia ``slow_beta``) + ``context`` (fast: ``fast_beta``, one slot per
running task). One agent solves the demo slice's tasks again and again: ``rounds`` rounds, each an
episode per task (agnews, dbpedia, yahoo, yelp) of ``ticks`` real fast steps (``Hive.learn``) on
fresh support rows of that task. At each episode's start the context slot is reset (a new task's
context, ``Hive.reset_slots``); the agent level carries over. Control, on the same rows: one level
``single`` (per agent, rank = both levels' ranks together, base inertia ``single_beta``), never
reset. Measured per system:

* quality over time: the current task's held-out answer NLL at each episode's start and end;
* improvement: round 1's mean episode-start NLL minus the last round's (what carries over);
* stability of the slow level: the relative change of its ΔW over an episode
  ``‖ΔW_end − ΔW_start‖ / ‖ΔW_end‖`` (the control's single level: the same figure);
* plasticity of the fast level: its ΔW norm at an episode's end over the slow level's change in that episode;
* retention: at the end, every task's held-out NLL with the slow level alone (the control: its level) minus the base's.
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
from lorahive.suites.demo import load_demo_suite  # noqa: E402

AGENT = "solver"
SYSTEMS = ("two levels: slow agent + fast context", "control: one level")
CRITERION = (
    "spec's goal: continuous improvement on repeated solving, a stable agent level and a plastic context level. Read "
    "as: the two-level system's improvement is positive in every seed and at least the control's; its slow level's "
    "per-episode change is below the control's single level's; its fast level's plasticity exceeds 1; its retention "
    "(slow level alone, against the base) is no worse than the control's"
)


def stacks(spec: dict[str, Any]) -> dict[str, StackSpec]:
    r, lr = spec["rank"], spec["lr"]
    two = StackSpec(
        levels=(
            LevelSpec(name="agent", rank=r, alpha=r, scope="agent", inertia=spec["slow_beta"], lr=lr),
            LevelSpec(name="context", rank=r, alpha=r, scope="task", inertia=spec["fast_beta"], lr=lr),
        )
    )
    one = StackSpec(levels=(LevelSpec(name="single", rank=2 * r, alpha=2 * r, scope="agent", inertia=spec["single_beta"], lr=lr),))
    return {SYSTEMS[0]: two, SYSTEMS[1]: one}


def delta_w(hive: Any, level: str) -> torch.Tensor:
    """The agent's ΔW of ``level``, every module flattened into one vector."""
    core = hive.core
    idx = core.index([core.slot_of(level, AGENT)])
    scale = core.stack.get(level).scale
    with torch.no_grad():
        return torch.cat([(bank.B.index_select(0, idx)[0].float() @ bank.A.index_select(0, idx)[0].float()).flatten() * scale for bank in core.banks(level)]).cpu()


def nll(hive: Any, suite: dict[str, Any], task: str, levels: list[str], n: int) -> float:
    rows = [(AGENT, p, a) for p, a in suite[task].test[:n]]
    return float((hive.row_nll(rows, levels=levels) if levels else c._base_nll(hive, rows)).mean())


def system(hive: Any, suite: dict[str, Any], spec: dict[str, Any], name: str, plan: list[list[list[tuple[str, str]]]]) -> dict[str, Any]:
    two = name == SYSTEMS[0]
    slow, levels = ("agent", ["agent", "context"]) if two else ("single", ["single"])
    for lv in levels:
        hive.reset_slots(lv, [AGENT])
    episodes, drift, plasticity = [], [], []
    for e, rows in enumerate(plan):
        task = c.TASKS[e % len(c.TASKS)]
        if two:
            hive.reset_slots("context", [AGENT])
        start_w = delta_w(hive, slow)
        start = nll(hive, suite, task, levels, spec["eval"])
        for tick in rows:
            hive.learn({AGENT: tick}, steps=1)
        end_w = delta_w(hive, slow)
        change = float((end_w - start_w).norm())
        drift.append(change / max(float(end_w.norm()), 1e-12))
        if two:
            plasticity.append(float(delta_w(hive, "context").norm()) / max(change, 1e-12))
        episodes.append({"task": task, "round": e // len(c.TASKS), "start": start, "end": nll(hive, suite, task, levels, spec["eval"])})
    per_round = [statistics.fmean(ep["start"] for ep in episodes if ep["round"] == r) for r in range(spec["rounds"])]
    retention = {t: nll(hive, suite, t, [slow], spec["eval"]) - nll(hive, suite, t, [], spec["eval"]) for t in c.TASKS}
    return {
        "episodes": episodes,
        "start_by_round": per_round,
        "improvement": per_round[0] - per_round[-1],
        "slow_drift": statistics.fmean(drift[len(c.TASKS) :] or drift),  # after the first round: the slow level has content
        "fast_plasticity": statistics.fmean(plasticity) if plasticity else None,
        "retention": retention,
        "retention_mean": statistics.fmean(retention.values()),
        "episode_gain": statistics.fmean(ep["start"] - ep["end"] for ep in episodes),
    }


KEYS = ("improvement", "slow_drift", "fast_plasticity", "retention_mean", "episode_gain")


def judge(results: dict[str, Any]) -> tuple[str, str]:
    """The criterion in each seed (both systems on the same rows): the two-level system's improvement > 0 and ≥ the
    control's, its slow level's change < the control's level's, its fast plasticity > 1, its retention ≤ the control's."""
    two, one = results["systems"][SYSTEMS[0]], results["systems"][results["control"]]
    seeds = list(two)

    def get(runs: dict[str, Any], key: str) -> list[Any]:
        return [runs[s][key] for s in seeds]

    imp, imp_c = get(two, "improvement"), get(one, "improvement")
    drift, drift_c = get(two, "slow_drift"), get(one, "slow_drift")
    plastic = get(two, "fast_plasticity")
    ret, ret_c = get(two, "retention_mean"), get(one, "retention_mean")
    return c.judged([
        (f"improvement {c.over_seeds(imp)} > 0", [x > 0 for x in imp]),
        (f"improvement ≥ control's {c.over_seeds(imp_c)}", [x >= y for x, y in zip(imp, imp_c, strict=True)]),
        (f"slow level's change {c.over_seeds(drift)} < control's {c.over_seeds(drift_c)}", [x < y for x, y in zip(drift, drift_c, strict=True)]),
        (f"fast plasticity {c.over_seeds(plastic, 2)} > 1", [None if x is None else x > 1 for x in plastic]),
        (f"retention {c.over_seeds(ret)} ≤ control's {c.over_seeds(ret_c)}", [x <= y for x, y in zip(ret, ret_c, strict=True)]),
    ])  # fmt: skip


def run(size: str, out: Path, seeds: list[int], base: str | None = None) -> dict[str, Any]:
    r = c.begin(1, size, seeds, base)
    spec = r.spec
    suite = load_demo_suite(c.TASKS)
    per: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in SYSTEMS}
    hives = {name: c.make_hive(r.base, [AGENT], levels=st) for name, st in stacks(spec).items()}
    for seed in c.each(r, seeds):
        rng = random.Random(seed)
        plan = [[rng.sample(suite[c.TASKS[e % len(c.TASKS)]].train, spec["batch"]) for _ in range(spec["ticks"])] for e in range(spec["rounds"] * len(c.TASKS))]
        for name, hive in hives.items():
            torch.manual_seed(seed)
            per[name][str(seed)] = system(hive, suite, spec, name, plan)
    summary = {name: c.summarise(runs, KEYS) for name, runs in per.items()}
    return c.finish(r, out, {"systems": per, "summary": summary, "control": SYSTEMS[1]}, CRITERION, markdown, plot, judge)


def markdown(m: dict[str, Any]) -> str:
    cfg = m["config"]
    columns = [("improvement (round 1 − last, start NLL)", "improvement", 3), ("gain within an episode", "episode_gain", 3), ("slow level's change per episode", "slow_drift", 3),
               ("fast plasticity", "fast_plasticity", 2), ("retention (slow level − base NLL)", "retention_mean", 3)]  # fmt: skip
    return c.report(
        m, f"{cfg['rounds']} rounds × 4 tasks × {cfg['ticks']} steps, β slow {cfg['slow_beta']} / fast {cfg['fast_beta']} / single {cfg['single_beta']}",
        c.summary_table(["system"], c.named(m["summary"]), columns),
        "NLL: held-out answer NLL per example (nats) of the episode's task; improvement: round 1's mean episode-start NLL minus the "
        "last round's; slow level's change: ‖ΔW_end − ΔW_start‖ / ‖ΔW_end‖ per episode after round 1; fast plasticity: the "
        "context's ΔW norm at an episode's end over the slow level's change in it; retention: mean over tasks.",
    )


def plot(m: dict[str, Any], path: Path) -> None:
    fig, axes = c.panels()
    for name, runs in m["systems"].items():
        r = c.first(runs)
        axes[0].plot([ep["start"] for ep in r["episodes"]], marker="o", label=f"{name}: start")
        axes[0].plot([ep["end"] for ep in r["episodes"]], marker="x", linestyle="--", label=f"{name}: end")
        axes[1].bar([f"{t}\n{name[:3]}" for t in r["retention"]], list(r["retention"].values()), label=name)
    axes[0].set_xlabel("episode (first seed; tasks cycle agnews, dbpedia, yahoo, yelp)")
    axes[0].set_ylabel("current task's held-out NLL")
    axes[1].set_ylabel("retention: slow level − base NLL (end)")
    axes[1].tick_params(axis="x", labelsize=6)
    axes[0].legend(fontsize=6)
    c.save_figure(fig, path, f"Experiment 1: two-layer proof of concept ({m['size']}, {m['base']})")


if __name__ == "__main__":
    sys.exit(c.main(__doc__, run, markdown))
