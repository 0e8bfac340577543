"""Experiment 3 (seed 004): hierarchical stability under a periodic distribution shift.

    python recipes/experiments/exp03_stability.py --size small --out runs/exp03-small
    python recipes/experiments/exp03_stability.py --size full --out runs/exp03-full     # one GPU, embedded model

One agent learns a long stream of the demo slice's four task types in a fixed order, each for
``phase_ticks`` ticks, the order repeated ``cycles`` times (a periodic shift). Each tick is one real
learning step (``Hive.learn``) on ``batch`` support examples of the current type. Three systems on
the same draws and seed:

    A  control: a flat LoRA, the agent level alone learns (step 2e-2·(1 − 0.5))
    B  the hierarchy: domain, swarm and agent levels learn together at their own speeds (lr·(1 − inertia))
    C  step-matched control: the flat LoRA with the hierarchy's step budget, its agent level's lr
       scaled so that its step equals the sum of B's three levels' steps (B is not just a larger step)

The foundation level is frozen in both; the context level is left out of learning and scoring (the
persistent view). Held-out answer NLL (summed per example) on every type after every phase, and on
the current type every tick. Measured: catastrophic forgetting (per type, its loss at the run's end
minus at the end of its last training phase, mean over the types trained before the last phase; > 0 forgets), retention (per type, its
gain from the start kept at the end ÷ its best gain at a phase end), adaptation speed (the new type's
loss drop over the first ``adapt`` ticks of a phase, mean over phases) and the final mean loss.
"""

from __future__ import annotations

import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402

from lorahive.suites.demo import load_demo_suite  # noqa: E402

SYSTEMS = {"A: flat (agent level)": ["agent"], "B: hierarchy (domain, swarm, agent)": ["domain", "swarm", "agent"], "C: flat, step-matched": ["agent"]}
MATCHED, HIERARCHY = "C: flat, step-matched", "B: hierarchy (domain, swarm, agent)"
VIEW = ["foundation", "domain", "swarm", "agent"]
CRITERION = (
    "spec: catastrophic forgetting minimal, fast adaptation to new tasks, retention of old skills. Read here as: "
    "B forgets less than A (lower forgetting, higher retention) while adapting at least 0.8 as fast, and so against C, "
    "the flat LoRA at B's step budget (else B's adaptation is a larger step)"
)


def held_out(hive: Any, suite: dict[str, Any], tasks: list[str], n: int) -> list[float]:
    rows = [("ann", p, a) for t in tasks for p, a in suite[t].test[:n]]
    return [float(x) for x in hive.row_nll(rows, levels=VIEW).view(len(tasks), n).mean(1)]


def levels(spec: dict[str, Any], agent_lr: float = 1.0) -> Any:
    """The stack at the size's ``lr_scale``, the agent level's lr × ``agent_lr``."""
    stack = c.stack()
    return type(stack)(levels=tuple(lv.model_copy(update={"lr": lv.lr * spec["lr_scale"] * (agent_lr if lv.name == "agent" else 1.0)}) for lv in stack.levels))


def step_budget(stack: Any, learns: list[str]) -> float:
    """A tick's total step: Σ over the learning levels of lr·(1 − inertia)."""
    return sum(stack.get(lv).step_size for lv in learns)


def simulate(base: str, spec: dict[str, Any], learns: list[str], seed: int, agent_lr: float = 1.0) -> dict[str, Any]:
    stack = levels(spec, agent_lr)
    hive = c.make_hive(base, ["ann"], stack, seed=seed)
    suite = load_demo_suite(c.TASKS)
    rng = random.Random(seed)
    start = held_out(hive, suite, list(c.TASKS), spec["eval"])
    phases, current, adapt = [], [], []
    last_phase: dict[str, int] = {}
    for cycle in range(spec["cycles"]):
        for t in c.TASKS:
            before = held_out(hive, suite, [t], spec["eval"])[0]
            curve = []
            for _ in range(spec["phase_ticks"]):
                hive.learn({"ann": rng.sample(suite[t].train, spec["batch"])}, levels=learns)
                curve.append(held_out(hive, suite, [t], spec["eval"])[0])
            adapt.append(before - curve[min(spec["adapt"], len(curve)) - 1])
            current += curve
            last_phase[t] = len(phases)
            phases.append({"cycle": cycle, "task": t, "losses": held_out(hive, suite, list(c.TASKS), spec["eval"])})
    end = phases[-1]["losses"]
    forgetting, retention = {}, {}
    for j, t in enumerate(c.TASKS):
        forgetting[t] = end[j] - phases[last_phase[t]]["losses"][j]
        best = max(start[j] - p["losses"][j] for p in phases)
        retention[t] = (start[j] - end[j]) / best if best > 0 else None
    kept = [v for v in retention.values() if v is not None]
    return {
        "start": start, "phases": phases, "current": current, "forgetting": forgetting, "retention": retention,
        "forgetting_mean": statistics.fmean(v for t, v in forgetting.items() if t != phases[-1]["task"]), "retention_mean": statistics.fmean(kept) if kept else None,
        "adaptation": statistics.fmean(adapt), "final_loss": statistics.fmean(end),
    }  # fmt: skip


KEYS = ("forgetting_mean", "retention_mean", "adaptation", "final_loss")


def judge(results: dict[str, Any]) -> tuple[str, str]:
    """The criterion in each seed (the systems on the same draws), against A and against C alike: B's forgetting lower,
    its retention higher, its adaptation ≥ 0.8 × theirs (undefined where theirs is ≤ 0: no speed to be a share of)."""
    per = results["systems"]
    b = per[HIERARCHY]
    seeds = list(b)

    def get(name: str, key: str) -> list[Any]:
        return [per[name][s][key] for s in seeds]

    parts: list[tuple[str, list[bool | None]]] = []
    for name in (results["control"], results["step_matched"]):
        tag = name.split(":")[0]
        fb, fo = get(HIERARCHY, "forgetting_mean"), get(name, "forgetting_mean")
        rb, ro = get(HIERARCHY, "retention_mean"), get(name, "retention_mean")
        ab, ao = get(HIERARCHY, "adaptation"), get(name, "adaptation")
        parts += [
            (f"B's forgetting {c.over_seeds(fb)} < {tag}'s {c.over_seeds(fo)}", [x < y for x, y in zip(fb, fo, strict=True)]),
            (f"B's retention {c.over_seeds(rb)} > {tag}'s {c.over_seeds(ro)}", [None if x is None or y is None else x > y for x, y in zip(rb, ro, strict=True)]),
            (f"B's adaptation {c.over_seeds(ab)} ≥ 0.8 × {tag}'s {c.over_seeds(ao)}", [None if y <= 0 else x >= 0.8 * y for x, y in zip(ab, ao, strict=True)]),
        ]  # fmt: skip
    return c.judged(parts)


def run(size: str, out: Path, seeds: list[int], base: str | None = None) -> dict[str, Any]:
    r = c.begin(3, size, seeds, base)
    stack = levels(r.spec)
    factor = step_budget(stack, SYSTEMS[HIERARCHY]) / step_budget(stack, ["agent"])  # C's agent lr: B's budget in one level
    per = {name: {str(s): simulate(r.base, r.spec, learns, s, factor if name == MATCHED else 1.0) for s in c.each(r, seeds, name)} for name, learns in SYSTEMS.items()}
    budget = {name: step_budget(levels(r.spec, factor if name == MATCHED else 1.0), learns) for name, learns in SYSTEMS.items()}
    summary = {name: c.summarise(runs, KEYS) | {"step_budget": budget[name]} for name, runs in per.items()}
    results = {"systems": per, "summary": summary, "control": "A: flat (agent level)", "step_matched": MATCHED, "agent_lr_factor": factor}
    return c.finish(r, out, results, CRITERION, markdown, plot, judge)


def markdown(m: dict[str, Any]) -> str:
    columns = [("step budget / tick", lambda s: f"{s['step_budget']:.4g}", 0), ("forgetting (nats)", "forgetting_mean", 3), ("retention", "retention_mean", 3),
               ("adaptation (nats)", "adaptation", 3), ("final mean loss", "final_loss", 3)]  # fmt: skip
    start = statistics.fmean(c.first(c.first(m["systems"]))["start"])
    return c.report(
        m, f"{m['config']['cycles']} cycles × 4 types × {m['config']['phase_ticks']} ticks",
        c.summary_table(["system"], c.named(m["summary"]), columns),
        f"held-out answer NLL summed per example (nats); mean loss at the start: {start:.3f}. "
        f"adaptation: the new type's loss drop over the first {m['config']['adapt']} ticks of a phase; step budget: Σ lr·(1 − inertia) "
        f"over the learning levels (C: the agent level's lr × {m['agent_lr_factor']:.3g}).",
    )


def plot(m: dict[str, Any], path: Path) -> None:
    fig, axes = c.panels()
    c.lines(axes[0], {name: c.first(runs)["current"] for name, runs in m["systems"].items()}, "tick (a new type every phase)", "held-out loss on the current type (first seed)", start=1)
    for i in range(1, 4 * m["config"]["cycles"]):
        axes[0].axvline(i * m["config"]["phase_ticks"] + 0.5, color="k", lw=0.3)
    names = list(m["systems"])
    c.task_bars(axes[1], names, c.TASKS, lambda n, t: statistics.fmean(r["forgetting"][t] for r in m["systems"][n].values()), "forgetting per type (nats; > 0 forgets)", [n.split(" (")[0] for n in names])
    axes[1].axhline(0, color="k", lw=0.5)
    c.save_figure(fig, path, f"Experiment 3: stability under periodic shift ({m['size']}, {m['base']})")


if __name__ == "__main__":
    sys.exit(c.main(__doc__, run, markdown))
