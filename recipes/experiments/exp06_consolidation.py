"""Experiment 6 (seed 004): consolidation by autocorrelation against consolidation by a timer.

    python recipes/experiments/exp06_consolidation.py --size small --out runs/exp06-small
    python recipes/experiments/exp06_consolidation.py --size full --out runs/exp06-full     # one GPU, embedded model

Two systems on the same tasks and the same draws: the library's consolidation with
``trigger: autocorrelation`` and with ``trigger: timer`` (every check counts: ready on the same
schedule, stable or not). Agents work the demo tasks (agent i on task i mod 4); each tick each
agent's context slot (a fast level: it leaks ``leak`` of its ΔW per tick) learns a real
minibatch's gradient deviation of its task (noise) and — for half of the agents, the *stable*
ones — its task's local pattern too (``common.py``). Consolidation checks the context slots
every ``every`` ticks; what is ready moves context → agent at once (bandwidth unlimited, so only
the detector differs). Measured: when each system consolidates (first migration tick), what it
consolidates (migrations of stable vs fluctuating slots: precision), and the quality of what
landed in the agent level (held-out loss change of each agent's task with the agent level alone;
alignment of a stable agent's slot with its true pattern).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402
import torch  # noqa: E402

from lorahive.config import BandwidthConfig, ConsolidationConfig  # noqa: E402
from lorahive.mechanisms.bandwidth import Bandwidth  # noqa: E402
from lorahive.mechanisms.base import TickView  # noqa: E402
from lorahive.mechanisms.consolidation import Consolidation, dominant  # noqa: E402

CRITERION = (
    "spec hypothesis: autocorrelation consolidates only really stable patterns, a timer may consolidate random "
    "fluctuations. Read here as: autocorrelation's precision (share of migrations from stable slots) ≥ 0.9 and above "
    "the timer's in every seed, and the fluctuation norm it consolidates into the agent level below the timer's "
    "(held-out gains and the stable slots' alignment with their true pattern are reported beside)"
)


def stable_agent(i: int) -> bool:
    """Half of the agents, alternating within each task type (agent i works task i mod 4)."""
    return (i + i // len(c.TASKS)) % 2 == 0


@torch.no_grad()
def leak(hive: Any, level: str, slots: list[int], rate: float) -> None:
    """Shrink ``slots``' ΔW by ``rate`` exactly (a fast level forgetting)."""
    slots = [s for s in slots if s in hive.core.written[level]]
    if not slots or rate <= 0:
        return
    pat = dominant(hive.core, level, slots, hive.core.stack.get(level).rank)
    deltas = [{p: (-rate * pat.U[p][j] * pat.S[p][j], pat.V[p][j]) for p in pat.U} for j in range(len(slots))]
    hive.core.add_deltas(level, slots, deltas)


@torch.no_grad()
def alignment(hive: Any, world: c.World, slot: int, u: torch.Tensor) -> float:
    """Cosine between the agent slot's ΔW and the rank-1 pattern ``u``'s (in ΔW space, over all modules)."""
    core = hive.core
    scale = core.stack.get("agent").scale
    num, parts = 0.0, u.split(world.sizes)
    for (path, bank), um in zip(core.named_banks("agent"), parts, strict=True):
        b, a = bank.B[slot].float(), bank.A[slot].float()
        num += float(scale * (um @ b) @ (a @ world.V[path]))
    e = float(c.energy(hive, "agent", [slot])[0].sqrt())
    return num / e if e > 0 else 0.0


def system(hive: Any, world: c.World, spec: dict[str, Any], trigger: str, draws: list[list[torch.Tensor]]) -> dict[str, Any]:
    """One system over the precomputed noise ``draws`` (tick → agent → u); what it consolidated and how good it is."""
    core = hive.core
    agents = core.agents
    tasks = [c.TASKS[i % len(c.TASKS)] for i in range(len(agents))]
    stable = [stable_agent(i) for i in range(len(agents))]
    ctx = [core.slot_of("context", a) for a in agents]
    core.reset("context", ctx)
    core.reset("agent", [core.slot_of("agent", a) for a in agents])
    cons = Consolidation(ConsolidationConfig(trigger=trigger, **spec["consolidation"]), [("context", "agent")])
    moves = Bandwidth(BandwidthConfig(), cons, rank=spec["consolidation"]["signature_rank"], limited=False)
    migrations: list[dict[str, Any]] = []
    for tick, noise in enumerate(draws, start=1):
        leak(hive, "context", ctx, spec["leak"])
        us = [spec["noise"] * n + (world.local[t] if s else 0.0) for n, t, s in zip(noise, tasks, stable, strict=True)]
        core.add_deltas("context", ctx, [c.delta(world, hive, spec["step"] * u) for u in us])
        shared: dict[str, Any] = {}
        for phase in ("detect", "migrate", "drain"):
            view = TickView(tick, phase, [], (), {}, core.states, core, shared=shared)
            act = (cons if phase == "detect" else moves).run(view)
            if act is not None and phase != "detect":
                migrations += [{"tick": tick, "slot": m["slot"], "stable": stable[ctx.index(m["slot"])], "autocorr": m["autocorr"]} for m in act.detail["migrations"] if m["accepted"]]
    base = c.task_loss(hive, agents, tasks, world, [], spec["eval"])
    with_agent = c.task_loss(hive, agents, tasks, world, ["agent"], spec["eval"])
    gain = [b - w for b, w in zip(base, with_agent, strict=True)]
    first = {}
    for group, flag in (("stable", True), ("fluctuating", False)):
        ticks = [min((m["tick"] for m in migrations if m["slot"] == ctx[i]), default=None) for i in range(len(agents)) if stable[i] == flag]
        first[group] = [t for t in ticks if t is not None]
    n_stable = sum(m["stable"] for m in migrations)
    return {
        "migrations": migrations,
        "migrated_stable": n_stable,
        "migrated_fluctuating": len(migrations) - n_stable,
        "precision": n_stable / len(migrations) if migrations else None,
        "first_tick_stable": sum(first["stable"]) / len(first["stable"]) if first["stable"] else None,
        "first_tick_fluctuating": sum(first["fluctuating"]) / len(first["fluctuating"]) if first["fluctuating"] else None,
        "gain_stable": sum(g for g, s in zip(gain, stable, strict=True) if s) / max(sum(stable), 1),
        "gain_fluctuating": sum(g for g, s in zip(gain, stable, strict=True) if not s) / max(len(stable) - sum(stable), 1),
        "alignment_stable": sum(alignment(hive, world, core.slot_of("agent", a), world.local[t]) for a, t, s in zip(agents, tasks, stable, strict=True) if s) / max(sum(stable), 1),
        "noise_norm_consolidated": float(c.energy(hive, "agent", [core.slot_of("agent", a) for a, s in zip(agents, stable, strict=True) if not s]).sum().sqrt()),
    }  # fmt: skip


KEYS = ("precision", "migrated_stable", "migrated_fluctuating", "first_tick_stable", "first_tick_fluctuating", "gain_stable", "gain_fluctuating", "alignment_stable", "noise_norm_consolidated")


def run(size: str, out: Path, seeds: list[int], base: str | None = None) -> dict[str, Any]:
    r = c.begin(6, size, seeds, base)
    spec = r.spec
    agents = [f"agent{i}" for i in range(spec["agents"])]
    hive = c.make_hive(r.base, agents)
    world = c.build_world(hive, spec["train"])
    tasks = [c.TASKS[i % len(c.TASKS)] for i in range(len(agents))]
    per_seed: dict[str, dict[str, Any]] = {"autocorrelation": {}, "timer": {}}
    for s in c.each(r, seeds):
        rng = random.Random(s)
        draws = [[c.noise(hive, world, t, rng, spec["batch"]) for t in tasks] for _ in range(spec["ticks"])]
        for trigger in per_seed:
            per_seed[trigger][str(s)] = system(hive, world, spec, trigger, draws)
    results = {
        "agents": len(agents), "stable_agents": [a for i, a in enumerate(agents) if stable_agent(i)], "systems": per_seed,
        "summary": {trig: c.summarise(runs, KEYS) for trig, runs in per_seed.items()}, "control": "timer",
    }  # fmt: skip
    return c.finish(r, out, results, CRITERION, markdown, plot, judge)


def judge(results: dict[str, Any]) -> tuple[str, str]:
    """The criterion per seed: autocorrelation's precision ≥ 0.9 and above the timer's, and its consolidated
    fluctuation norm below the timer's, each in every seed (:func:`common.judged`; a seed without migrations has no
    precision: that part is then inconclusive)."""
    auto, timer = results["systems"]["autocorrelation"], results["systems"][results["control"]]
    seeds = list(auto)
    p_auto, p_timer = [auto[s]["precision"] for s in seeds], [timer[s]["precision"] for s in seeds]
    n_auto, n_timer = [auto[s]["noise_norm_consolidated"] for s in seeds], [timer[s]["noise_norm_consolidated"] for s in seeds]
    high = [None if p is None else p >= 0.9 for p in p_auto]
    above = [None if p is None or q is None else p > q for p, q in zip(p_auto, p_timer, strict=True)]
    quiet = [a < t for a, t in zip(n_auto, n_timer, strict=True)]
    return c.judged([
        (f"precision {c.over_seeds(p_auto)} ≥ 0.9", high),
        (f"precision above the timer's {c.over_seeds(p_timer)}", above),
        (f"fluctuation norm consolidated {c.over_seeds(n_auto, 4)} < the timer's {c.over_seeds(n_timer, 4)}", quiet),
    ])  # fmt: skip


def markdown(m: dict[str, Any]) -> str:
    columns = [(k, k, 2 if "tick" in k or "migrated" in k else 3) for k in KEYS]
    return c.report(
        m, f"{m['agents']} agents", c.summary_table(["system"], c.named(m["summary"], m["control"]), columns),
        "gain: held-out loss of the agent's task without levels minus with the agent level alone (nats; > 0 helps).",
    )  # fmt: skip


def plot(m: dict[str, Any], path: Path) -> None:
    fig, axes = c.panels()
    for (trig, runs), color in zip(m["systems"].items(), ("C0", "C1"), strict=False):
        for j, r in enumerate(runs.values()):
            for flag, marker in ((True, "o"), (False, "x")):
                ticks = [x["tick"] for x in r["migrations"] if x["stable"] == flag]
                axes[0].scatter(ticks, [x["autocorr"] for x in r["migrations"] if x["stable"] == flag], marker=marker, color=color, alpha=0.6,
                                label=f"{trig}, {'stable' if flag else 'fluctuating'}" if j == 0 else None)  # fmt: skip
    axes[0].set_xlabel("tick of migration")
    axes[0].set_ylabel("autocorrelation of the migrated slot")
    axes[0].legend(fontsize=7)
    names = list(m["summary"])
    for k, key in enumerate(("gain_stable", "gain_fluctuating")):
        vals = [m["summary"][n][key] for n in names]
        axes[1].bar([i + 0.4 * k for i in range(len(names))], [v["mean"] for v in vals], 0.4, yerr=[v["std"] for v in vals], label=key)
    axes[1].set_xticks([i + 0.2 for i in range(len(names))], names)
    axes[1].set_ylabel("held-out loss gain of the agent level (nats)")
    axes[1].legend(fontsize=7)
    c.save_figure(fig, path, f"Experiment 6: autocorrelation vs timer ({m['size']}, {m['base']})")


if __name__ == "__main__":
    sys.exit(c.main(__doc__, run, markdown))
