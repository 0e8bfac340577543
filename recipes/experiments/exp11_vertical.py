"""Experiment 11 (seed 004): vertical resonance as a detector of universal patterns, three pattern types.

    python recipes/experiments/exp11_vertical.py --size small --out runs/exp11-small
    python recipes/experiments/exp11_vertical.py --size full --out runs/exp11-full     # one GPU, embedded model

A three-level system, context → agent → swarm (ann's slots). The patterns are built from the
demo tasks (``common.py``): ``u_S = −H⁺·1_S`` lowers, to first order, exactly the tasks in S.
Each level sees its own data — context agnews, agent the topic family (agnews, dbpedia,
yahoo), swarm every task — so a pattern is *useful at* the levels whose data it helps, and
arrives (is learned) there, as in ``tests/test_vertical_resonance_planted.py``:

    type 1  local      S = {agnews}                 learned at context
    type 2  family     S = {agnews, dbpedia, yahoo} learned at context + agent
    type 3  universal  S = every task               learned at context + agent + swarm
    random  (control)  no pattern: each level learns its real minibatch noise only

Each tick every level writes a real minibatch's deviation from its data's mean gradient (unit
norm) plus, at the levels it arrives at, the pattern (unit), times ``step`` and times the
level's current learning-rate factor (``lr / lr₀``: what vertical resonance changes). The
library's consolidation (context → agent → swarm) and bandwidth queues run after the step;
resonant ticks fast-track their ready migrations. Scenarios, on the same noise draws:

    A  control: vertical resonance off (migration by autocorrelation only; no horizontal
       resonance runs here: one agent)
    B  + the library's vertical resonance (defaults: ema 0.8, threshold 0.3, boost ×2)
    C  several agents (the multi-agent control): ``agents`` agents, agent i works task i mod 4
       at its own context and agent levels (its task's noise, plus the pattern where it helps that
       task) and the shared swarm level learns their mean, so the levels' alignment comes from the
       swarm, not from one agent's planted view of every level's data; vertical resonance off
    D  C + vertical resonance (their own noise draws, per agent and level, of the same seeds)

Measured per type: the settled vertical alignment ``c`` (mean after ``settled`` compared ticks),
its share of resonant ticks, the first tick an accepted migration (of whatever ann's slot held:
noise migrates too) reached agent and swarm (migration speed), the final distribution (the
pattern's component in each level's ΔW), and
the pattern's real utility: the mean over the three levels of the held-out loss drop on the
level's data with the pattern (× ``eps``) in the swarm level (C, D: over the agents' own tasks). The spec's criteria: Pearson
correlation of ``c`` with real utility > 0.7 over every (type, seed) run; false-positive rate
< 5 %: the share of compared ticks on which a low-utility run (local, random) was resonant; for B and for D.
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
from exp11_report import markdown, plot  # noqa: E402

from lorahive.adapters import ActivityProbe  # noqa: E402
from lorahive.config import BandwidthConfig, ConsolidationConfig, VerticalResonanceConfig  # noqa: E402
from lorahive.learning import answer_nll, pack_examples  # noqa: E402
from lorahive.mechanisms.bandwidth import Bandwidth  # noqa: E402
from lorahive.mechanisms.base import TickView  # noqa: E402
from lorahive.mechanisms.consolidation import Consolidation  # noqa: E402
from lorahive.mechanisms.vertical_resonance import VerticalResonance  # noqa: E402

LEVELS = ("context", "agent", "swarm")  # fast → slow
SEES = {"context": ("agnews",), "agent": ("agnews", "dbpedia", "yahoo"), "swarm": c.TASKS}
TYPES = {"type 1: local": ("agnews",), "type 2: family": ("agnews", "dbpedia", "yahoo"), "type 3: universal": c.TASKS, "random (control)": ()}
LOW_UTILITY = ("type 1: local", "random (control)")
SCENARIOS = {  # name: (several agents, vertical resonance)
    "A: no vertical resonance": (False, False),
    "B: vertical resonance": (False, True),
    "C: several agents, no vertical resonance": (True, False),
    "D: several agents, vertical resonance": (True, True),
}
CRITERION = (
    "spec: universal patterns settle in the slow levels faster than by autocorrelation alone; type 1 stays in "
    "context, type 2 in agent; the correlation of vertical alignment with real utility > 0.7; false-positive rate "
    "< 5 % (random patterns must not pass). Read here as: B's Pearson r(settled c, utility) over every (type, seed) "
    "run > 0.7; B's share of resonant compared ticks over the local and random runs < 0.05; type 3 reaches the swarm "
    "earlier in B than in A; and so in D, where the alignment comes from several agents (the swarm), not one agent's "
    "planted view of every level's data"
)


def patterns(world: c.World) -> dict[str, torch.Tensor]:
    pinv = torch.linalg.pinv(world.H)
    out = {}
    for kind, useful in TYPES.items():
        if useful:
            u = -(pinv @ torch.tensor([float(t in useful) for t in c.TASKS], device=world.H.device))
            out[kind] = u / u.norm()
    return out


def utility(hive: Any, world: c.World, pats: dict[str, torch.Tensor], eps: float, n: int) -> dict[str, dict[str, float]]:
    """Per type, the held-out loss drop per level's data with ``eps``·pattern in the swarm level; ``mean``: over the levels."""
    slot = hive.core.slot_of("swarm", "ann")
    agents = ["ann"] * len(c.TASKS)
    hive.core.reset("swarm", [slot])
    base = dict(zip(c.TASKS, c.task_loss(hive, agents, list(c.TASKS), world, [], n), strict=True))
    out = {}
    for kind in TYPES:
        if kind not in pats:
            out[kind] = {lv: 0.0 for lv in LEVELS} | {"mean": 0.0, "tasks": dict.fromkeys(c.TASKS, 0.0)}
            continue
        hive.core.reset("swarm", [slot])
        hive.core.add_delta("swarm", slot, c.delta(world, hive, eps * pats[kind]))
        loss = dict(zip(c.TASKS, c.task_loss(hive, agents, list(c.TASKS), world, ["swarm"], n), strict=True))
        per = {lv: statistics.fmean(base[t] - loss[t] for t in SEES[lv]) for lv in LEVELS}
        out[kind] = per | {"mean": statistics.fmean(per.values()), "tasks": {t: base[t] - loss[t] for t in c.TASKS}}
    hive.core.reset("swarm", [slot])
    return out


def grad_inputs(hive: Any, world: c.World, examples: list[tuple[str, str]], keep: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A minibatch's gradient in the rank-1 parameterisation, and its rows' module inputs (the sketches' probes)."""
    weights = {p: layer.base.weight for p, layer in hive.core.layers.items()}
    for w in weights.values():
        w.requires_grad_(True)
    batch = pack_examples(hive.tokenizer, examples, hive.core.max_length).to(hive.device)
    probe = ActivityProbe([], batch.attention_mask, keep_inputs=keep)
    with hive.core.routing.use(hive.core.route([hive.core.agents[0]] * len(examples), levels=[])), hive.core.routing.probing(probe):
        total, count = answer_nll(hive.model, batch)
    grads = torch.autograd.grad((total / count).mean(), list(weights.values()))
    for w in weights.values():
        w.requires_grad_(False)
    return c.as_u(world.V, dict(zip(weights, grads, strict=True))), probe.inputs


def sees(level: str, task: str | None) -> tuple[str, ...]:
    """The data a level's slot learns from: one agent's (``task`` None) as ``SEES``; an agent of several, its own task."""
    return SEES[level] if task is None else (task,)


def arrives(kind: str, seen: tuple[str, ...]) -> bool:
    """Whether the pattern is learned from ``seen``: it helps every task there (the random control: nowhere)."""
    return bool(TYPES[kind]) and set(seen) <= set(TYPES[kind])


def noise_draw(hive: Any, world: c.World, spec: dict[str, Any], seed: int, tasks: list[str | None]) -> tuple[list[dict[str, list[torch.Tensor]]], list[dict[str, torch.Tensor]]]:
    """Per tick, level and agent (``tasks``: each one's task), a unit minibatch deviation from the data's mean gradient;
    and the first agent's context minibatch's inputs."""
    rng = random.Random(seed)
    ticks, inputs = [], []
    for _ in range(spec["ticks"]):
        tick: dict[str, list[torch.Tensor]] = {lv: [] for lv in LEVELS}
        for lv in LEVELS:
            for i, task in enumerate(tasks):
                seen = sees(lv, task)
                pool = [ex for t in seen for ex in world.suite[t].train]
                keep = spec["batch"] if lv == "context" and i == 0 else 0
                g, probed = grad_inputs(hive, world, rng.sample(pool, spec["batch"]), keep)
                d = g - world.H[[c.TASKS.index(t) for t in seen]].mean(0)
                tick[lv].append(d / d.norm())
                if keep:
                    inputs.append(probed)
        ticks.append(tick)
    return ticks, inputs


def component(hive: Any, world: c.World, level: str, slot: int, u: torch.Tensor) -> float:
    """The pattern's component in the slot's ΔW: ``Σ_m u_mᵀ·(a/r)·B·A·v_m`` (u unit; 1 = the pattern at unit norm)."""
    core = hive.core
    scale = core.stack.get(level).scale
    idx = core.index([slot])
    parts = dict(zip(core.layers, u.split(world.sizes), strict=True))
    total = 0.0
    with torch.no_grad():
        for path, bank in core.named_banks(level):
            w = scale * bank.B.index_select(0, idx)[0].float() @ bank.A.index_select(0, idx)[0].float()
            total += float(parts[path] @ w @ world.V[path])
    return total


def plant(hive: Any, world: c.World, spec: dict[str, Any], kind: str, pattern: torch.Tensor | None, draws: tuple[list, list], vertical: bool, tasks: list[str | None]) -> dict[str, Any]:
    """One pattern type over the draws, learned by the hive's first ``len(tasks)`` agents (a shared level: their mean)."""
    core, stack = hive.core, hive.core.stack
    agents = core.agents[: len(tasks)]
    slots = {lv: sorted({core.slot_of(lv, a) for a in agents}) if stack.get(lv).scope == "shared" else [core.slot_of(lv, a) for a in agents] for lv in LEVELS}
    for lv in LEVELS:
        core.reset(lv, slots[lv])
    base_lr = {lv.name: lv.lr for lv in stack.levels}
    for lv in LEVELS:
        core.states[lv].lr = base_lr[lv]
    vr = VerticalResonance(VerticalResonanceConfig(enabled=True, **spec["vertical"]), list(LEVELS), base_lr, {lv.name: lv.inertia for lv in stack.levels})
    cons = Consolidation(ConsolidationConfig(**spec["consolidation"]), [("context", "agent"), ("agent", "swarm")])
    queues = Bandwidth(BandwidthConfig(**spec["bandwidth"]), cons, rank=1)
    cosines: list[float | None] = []
    modes: list[str] = []
    migrations: list[dict[str, Any]] = []
    for tick, (updates, seen) in enumerate(zip(*draws, strict=True), start=1):
        shared: dict[str, Any] = {}

        def view(phase: str, tick: int = tick, shared: dict[str, Any] = shared) -> TickView:
            return TickView(tick, phase, [], (), {}, core.states, core, shared=shared)

        if vertical:
            vr.run(view("draw"))
        for lv in LEVELS:
            us = [n + (pattern if pattern is not None and arrives(kind, sees(lv, t)) else 0.0) for n, t in zip(updates[lv], tasks, strict=True)]
            if len(slots[lv]) < len(us):  # a shared level learns the agents' mean
                us = [sum(us) / len(us)]
            factor = core.states[lv].lr / base_lr[lv]
            core.add_deltas(lv, slots[lv], [c.delta(world, hive, spec["step"] * factor * u) for u in us])
        if vertical:
            shared["module_inputs"] = seen
            action = vr.run(view("apply"))
            if action is not None:
                cosines.append(action.detail["cosine"])
                modes.append(action.detail["mode"])
        cons.run(view("detect"))
        for phase in ("migrate", "drain"):
            done = queues.run(view(phase))
            if done is not None:
                migrations += [{"tick": tick, "channel": m["channel"], "bypass": bool(m["bypass"])} for m in done.detail["migrations"] if m["accepted"]]
    live = [x for x in cosines if x is not None]
    settled = live[spec["settled"] :] or live
    first = {ch: min((m["tick"] for m in migrations if m["channel"] == ch), default=None) for ch in ("context→agent", "agent→swarm")}
    final = {lv: statistics.fmean(component(hive, world, lv, s, pattern) for s in slots[lv]) if pattern is not None else 0.0 for lv in LEVELS}
    for lv in LEVELS:
        core.states[lv].lr = base_lr[lv]
    return {
        "settled_c": statistics.fmean(settled) if settled else None,
        "resonant_ticks": modes.count("resonant"),
        "dissonant_ticks": modes.count("dissonant"),
        "compared_ticks": len(modes),
        "modes": "".join(m[0] for m in modes),
        "first_to_agent": first["context→agent"],
        "first_to_swarm": first["agent→swarm"],
        "migrations": len(migrations),
        "bypassed": sum(m["bypass"] for m in migrations),
        "final": final,
    }


def pearson(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3 or statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:
        return None
    return statistics.correlation(xs, ys)


def criteria(per: dict[str, dict[str, Any]], utility_of: dict[str, float]) -> dict[str, Any]:
    """The spec's two figures over a scenario's runs: Pearson r(settled c, utility) and the false-positive rate."""
    points = [(r["settled_c"], utility_of[k]) for k in TYPES for r in per[k].values() if r["settled_c"] is not None]
    low = [r for k in LOW_UTILITY for r in per[k].values()]
    fp, compared = sum(r["resonant_ticks"] for r in low), sum(r["compared_ticks"] for r in low)
    return {
        "correlation_alignment_utility": pearson([x for x, _ in points], [y for _, y in points]), "points": len(points),
        "false_positive_rate": fp / compared if compared else None, "false_positive_ticks": [fp, compared],
    }  # fmt: skip


def run(size: str, out: Path, seeds: list[int], base: str | None = None) -> dict[str, Any]:
    r = c.begin(11, size, seeds, base)
    spec = r.spec
    hive = c.make_hive(r.base, ["ann", "bob"])
    world = c.build_world(hive, spec["train"])
    several = [c.TASKS[i % len(c.TASKS)] for i in range(spec["agents"])]  # agent i works task i mod 4
    swarm = c.make_hive(r.base, [f"agent{i}" for i in range(spec["agents"])])  # the same base: the same world
    pats = patterns(world)
    useful = utility(hive, world, pats, spec["eps"], spec["eval"])
    swarm_useful = {k: statistics.fmean(useful[k]["tasks"][t] for t in several) for k in TYPES}  # the agents' own tasks
    per: dict[str, dict[str, dict[str, Any]]] = {s: {k: {} for k in TYPES} for s in SCENARIOS}
    for seed in c.each(r, seeds):
        draws = {False: noise_draw(hive, world, spec, seed, [None]), True: noise_draw(swarm, world, spec, seed, list(several))}
        for name, (multi, vertical) in SCENARIOS.items():
            for kind in TYPES:
                per[name][kind][str(seed)] = plant(swarm if multi else hive, world, spec, kind, pats.get(kind), draws[multi], vertical, list(several) if multi else [None])
    summary: dict[str, Any] = {}
    for name, kinds in per.items():
        summary[name] = {}
        for kind, runs in kinds.items():
            rs = list(runs.values())
            summary[name][kind] = c.summarise(runs, ("settled_c", "first_to_agent", "first_to_swarm")) | {
                "resonant_share": c.mean_spread([r["resonant_ticks"] / r["compared_ticks"] if r["compared_ticks"] else 0.0 for r in rs]),
                "reached_agent": sum(r["first_to_agent"] is not None for r in rs),
                "reached_swarm": sum(r["first_to_swarm"] is not None for r in rs),
                "final": {lv: c.mean_spread([r["final"][lv] for r in rs]) for lv in LEVELS},
            }
    results = {
        "utility": useful, "scenarios": per, "summary": summary, "control": "A: no vertical resonance",
        **criteria(per["B: vertical resonance"], {k: useful[k]["mean"] for k in TYPES}),
        "several_agents": {"agents": spec["agents"], "tasks": several, "utility": swarm_useful, **criteria(per["D: several agents, vertical resonance"], swarm_useful)},
    }  # fmt: skip
    return c.finish(r, out, results, CRITERION, markdown, plot, judge)


def judge(results: dict[str, Any]) -> tuple[str, str]:
    """For B (against A) and D (against C): Pearson r over every (type, seed) run > 0.7 and the false-positive rate < 0.05
    (the spec's, over all runs; undefined: inconclusive); type 3 reaches the swarm earlier than its control in every seed
    (never reaching: later than any tick)."""
    per, parts, why = results["scenarios"], [], []
    for name, control, figures in (("B: vertical resonance", "A: no vertical resonance", results), ("D: several agents, vertical resonance", "C: several agents, no vertical resonance", results["several_agents"])):
        r, fp = figures["correlation_alignment_utility"], figures["false_positive_rate"]
        on, off = per[name]["type 3: universal"], per[control]["type 3: universal"]
        earlier = [on[s]["first_to_swarm"] is not None and (off[s]["first_to_swarm"] is None or on[s]["first_to_swarm"] < off[s]["first_to_swarm"]) for s in on]
        parts += [[None if r is None else r > 0.7], [None if fp is None else fp < 0.05], earlier]

        def tick(x: int | None) -> str:
            return "never" if x is None else str(x)

        ticks = ", ".join(f"{tick(on[s]['first_to_swarm'])} vs {tick(off[s]['first_to_swarm'])}" for s in on)
        why.append(
            f"{name[0]}: r {'undefined' if r is None else f'{r:.3f}'} (needs > 0.7), false positives {'undefined' if fp is None else f'{fp:.3f}'} (needs < 0.05), "
            f"type 3 → swarm at tick {ticks} ({name[0]} vs {control[0]}; earlier in {sum(earlier)}/{len(earlier)} seeds)"
        )
    return c.seedwise(parts), "; ".join(why)


if __name__ == "__main__":
    sys.exit(c.main(__doc__, run, markdown))
