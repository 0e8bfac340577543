"""Experiment 8 (seed 004): meta-architecture, whether the hierarchy's depth grows with the tasks' difficulty.

    python recipes/experiments/exp08_growth.py --size small --out runs/exp08-small
    python recipes/experiments/exp08_growth.py --size full --out runs/exp08-full     # one GPU, embedded model

The stack starts as the base model plus one level, ``context`` (per agent: it carries over between
ticks, so its updates have a history). One agent; *difficulty* k is how many of the demo slice's
task types (agnews, dbpedia, yahoo, yelp: the first k) it works, one drawn at random per tick, and
each tick it takes a real fast step (``Hive.learn``) on that task's fresh support rows. The library's
``Topology`` mechanism runs in its ``draw`` and ``apply`` phases around the step: it splits a level
whose updates show two time scales (``C(2) − C(1)² ≥ split_excess``) into a new slower level above
it, and merges redundant neighbours. Control, on the same rows: topology off (the depth stays 1).

Measured per difficulty and system: the depth (number of levels) per tick, the final depth, the tick
of the first split, the splits and merges, the context level's two-scale excess per tick, and the
held-out answer NLL over the k tasks at the end (every level on).
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
from lorahive.config import TopologyConfig  # noqa: E402
from lorahive.mechanisms.base import TickView  # noqa: E402
from lorahive.mechanisms.topology import Topology  # noqa: E402
from lorahive.suites.demo import load_demo_suite  # noqa: E402

AGENT = "solver"
SYSTEMS = ("topology", "control: topology off")
CRITERION = (
    "spec's hypothesis: simple tasks give a shallow hierarchy, complex tasks a deep one; the structure emerges, not "
    "set. Read as: with topology on, the final depth does not fall as k grows and is larger at the largest k than at "
    "k = 1 in the mean over seeds; the control stays at depth 1"
)


def stack(spec: dict[str, Any]) -> StackSpec:
    r = spec["rank"]
    return StackSpec(levels=(LevelSpec(name="context", rank=r, alpha=r, scope="agent", inertia=spec["beta"], lr=spec["lr"]),))


def plan_draws(suite: dict[str, Any], spec: dict[str, Any], k: int, seed: int) -> list[tuple[str, list[tuple[str, str]]]]:
    """Per tick: the task drawn among the first ``k`` and its support rows."""
    rng = random.Random(seed * 1000 + k)
    out = []
    for _ in range(spec["ticks"]):
        task = rng.choice(c.TASKS[:k])
        out.append((task, rng.sample(suite[task].train, spec["batch"])))
    return out


def system(base: str, suite: dict[str, Any], spec: dict[str, Any], name: str, k: int, plan: list[Any], seed: int) -> dict[str, Any]:
    hive = c.make_hive(base, [AGENT], levels=stack(spec))
    core = hive.core
    torch.manual_seed(seed)
    topo = Topology(TopologyConfig(enabled=True, **spec["topology"]), ["context"], seed=seed) if name == SYSTEMS[0] else None
    depth, excess, changes = [], [], []
    for tick, (_task, rows) in enumerate(plan, start=1):
        if topo is not None:
            topo.run(TickView(tick, "draw", [], (), {}, core.states, core))
        hive.learn({AGENT: rows}, steps=spec["fast_steps"])
        if topo is not None:
            act = topo.run(TickView(tick, "apply", [], (), {}, core.states, core))
            assert act is not None
            excess.append(act.detail["levels"].get("context", {}).get("excess"))
            if act.kind in ("split", "merge"):
                changes.append({"tick": tick, "kind": act.kind, **{key: v for key, v in act.detail.items() if key != "levels"}})
        depth.append(len(core.levels))
    evals = [(AGENT, p, a) for t in c.TASKS[:k] for p, a in suite[t].test[: spec["eval"]]]
    splits = [ch for ch in changes if ch["kind"] == "split"]
    return {
        "depth": depth,
        "final_depth": depth[-1],
        "max_depth": max(depth),
        "first_split": splits[0]["tick"] if splits else None,
        "splits": len(splits),
        "merges": sum(ch["kind"] == "merge" for ch in changes),
        "changes": changes,
        "levels": core.stack.names(),
        "excess": excess,
        "loss": float(hive.row_nll(evals).mean()),
    }


KEYS = ("final_depth", "max_depth", "splits", "merges", "loss", "first_split")


def run(size: str, out: Path, seeds: list[int], base: str | None = None) -> dict[str, Any]:
    r = c.begin(8, size, seeds, base)
    spec = r.spec
    suite = load_demo_suite(c.TASKS)
    per: dict[str, dict[str, dict[str, Any]]] = {s: {str(k): {} for k in spec["difficulty"]} for s in SYSTEMS}
    for seed in c.each(r, seeds):
        for k in spec["difficulty"]:
            plan = plan_draws(suite, spec, k, seed)
            for name in SYSTEMS:
                per[name][str(k)][str(seed)] = system(r.base, suite, spec, name, k, plan, seed)
    summary = {
        name: {k: c.summarise(runs, KEYS) | {"split_runs": sum(x["first_split"] is not None for x in runs.values())} for k, runs in by_k.items()}
        for name, by_k in per.items()
    }
    return c.finish(r, out, {"systems": per, "summary": summary, "control": SYSTEMS[1]}, CRITERION, markdown, plot, judge)


def judge(results: dict[str, Any]) -> tuple[str, str]:
    """The criterion: topology's final depth, in the mean over seeds, does not fall from one difficulty k to the next
    and is larger at the largest k than at the smallest (k = 1); and the control stays at depth 1 (its max depth 1 at
    every k), per seed. Both hold → supported; the mean part fails, or the control leaves depth 1 in every seed → not
    supported; else (the control leaves depth 1 in some seeds only) inconclusive."""
    topo, control = results["systems"][SYSTEMS[0]], results["systems"][results["control"]]
    ks = sorted(topo, key=int)
    depth = [statistics.fmean(r["final_depth"] for r in topo[k].values()) for k in ks]
    rising = all(b >= a for a, b in zip(depth, depth[1:], strict=False)) and depth[-1] > depth[0]
    seeds = list(control[ks[0]])
    flat = [all(control[k][s]["max_depth"] == 1 for k in ks) for s in seeds]
    verdict = c.seedwise([[rising], flat])
    shown = ", ".join(f"k = {k}: {d:.2f}" for k, d in zip(ks, depth, strict=True))
    order = "does not fall" if all(b >= a for a, b in zip(depth, depth[1:], strict=False)) else "falls"
    why = f"topology's mean final depth {shown} ({order} as k grows; k = {ks[-1]} {'>' if depth[-1] > depth[0] else '≤'} k = {ks[0]}); the control at depth 1 in {sum(flat)}/{len(seeds)} seeds"
    return verdict, why


def markdown(m: dict[str, Any]) -> str:
    columns = [("final depth", "final_depth", 2), ("max depth", "max_depth", 2), ("splits", "splits", 2), ("merges", "merges", 2),
               ("first split (tick)", lambda s: c.cell(s["first_split"], 1) + f" ({s['split_runs']} runs)", 1), ("held-out NLL (end)", "loss", 2)]  # fmt: skip
    entries = [([name, k], s) for name, by_k in m["summary"].items() for k, s in by_k.items()]
    return c.report(
        m, f"one context level of rank {m['config']['rank']} at the start, {m['config']['ticks']} ticks",
        c.summary_table(["system", "k (task types)"], entries, columns),
        "Depth: levels in the stack (1 at the start); first split: over the runs that split (their number in brackets); "
        "NLL: held-out answer NLL per example (nats) over the k tasks.",
    )


def plot(m: dict[str, Any], path: Path) -> None:
    fig, axes = c.panels(3, (14 / 3, 4))
    topo = m["systems"][SYSTEMS[0]]
    c.lines(axes[0], {f"k = {k}": c.first(runs)["depth"] for k, runs in topo.items()}, "tick (first seed)", "depth (levels), topology on")
    axes[1].axhline(m["config"]["topology"]["split_excess"], color="grey", linestyle=":", label="split_excess")
    c.lines(axes[1], {f"k = {k}": c.first(runs)["excess"] for k, runs in topo.items()}, "tick (first seed)", "context's C(2) − C(1)²")
    ks = list(topo)
    for name in m["systems"]:
        means = [m["summary"][name][k]["final_depth"]["mean"] for k in ks]
        stds = [m["summary"][name][k]["final_depth"]["std"] for k in ks]
        axes[2].errorbar([int(k) for k in ks], means, yerr=stds, marker="o", capsize=3, label=name)
    axes[2].set_xlabel("difficulty k (task types)")
    axes[2].set_ylabel("final depth (mean ± std over seeds)")
    axes[2].legend(fontsize=7)
    c.save_figure(fig, path, f"Experiment 8: meta-architecture growth ({m['size']}, {m['base']})")


if __name__ == "__main__":
    sys.exit(c.main(__doc__, run, markdown))
