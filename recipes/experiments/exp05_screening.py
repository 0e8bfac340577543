"""Experiment 5 (seed 004): the screening / free-dispersion phase transition, and its hysteresis.

    python recipes/experiments/exp05_screening.py --size small --out runs/exp05-small
    python recipes/experiments/exp05_screening.py --size full --out runs/exp05-full     # one GPU, embedded model

One pattern in LoRA_agent, used at a varied frequency. Two agents share the agent level: ann
works every tick (her slot holds the universal pattern, shared across the tasks: the level's
strongest, which screening measures activity relative to); bob works on agnews with
probability ``f`` per tick (his slot holds agnews's task-local pattern, built from the task's
gradients, see ``common.py``). Each tick the real activity probe measures both slots' pattern
activity on the tick's support rows (bob's is 0 on a tick he does not work) and the library's
screening mechanism (``decay`` phase) updates the EMA, the mode and decays the patterns.

The frequency is swept up (``frequencies`` ascending) and then down, ``ticks`` ticks per value,
the screening state carried over; at each value bob's pattern is re-planted at full norm (as if
relearned), so what carries over is the mode's memory only. Per value: the share of ticks bob's
pattern is screened and the norm it keeps over the block (its stability). The control, in the
same run on the same draws: screening with almost no hysteresis band (``down = 0.99 · up``).

A pattern is planted as a learned one sits in its slot (:func:`plant`, ``add_delta``): ``A``'s row at its
init row's norm, ``B`` carrying the magnitude. Decay pulls ``B`` toward 0 and ``A`` toward its init rows
``A0``, so it acts alike at every pattern norm only when ``A``'s rows do not scale with the norm — before
``add_delta`` balanced its factors it split a singular value evenly (``A``'s row ∝ √norm: at the full size's
norm 0.003 on the embedded model ~50× below ``A0``'s rows), and decay turned the slot into ``B·A0``, a term that
is not the pattern and whose norm grew 8× (the first full-size run). The kept norm (:func:`pattern_kept`) is the
pattern's own part of the slot's ΔW, its projection on the planted ΔW, not the slot's whole norm (``slot_norm``,
kept beside it).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402
import torch  # noqa: E402

from lorahive.config import ScreeningConfig  # noqa: E402
from lorahive.mechanisms.base import TickView  # noqa: E402
from lorahive.mechanisms.screening import Screening  # noqa: E402

CRITERION = (
    "spec: the stability-vs-frequency curve has a sharp (phase) transition, and the forward and backward "
    "thresholds differ (hysteresis). Read here as: in every seed the up-sweep's threshold frequency exceeds the "
    "down-sweep's (width > 0) and the width exceeds the narrow-band control's; one step between neighbouring "
    "frequencies carries at least half of the stability's total change"
)


Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module path -> (B (out, r), A (r, in)) of one slot


@torch.no_grad()
def plant(hive: Any, level: str, slot: int, delta: Factors) -> Factors:
    """Reset ``slot`` and write ``delta`` into it (``add_delta``: every pattern's ``A`` row at its init row's norm, ``B``
    carrying the magnitude, as a pattern learned from init sits); the slot's factors."""
    core = hive.core
    core.reset(level, [slot])
    core.add_delta(level, slot, delta)
    return factors(hive, level, slot)


@torch.no_grad()
def factors(hive: Any, level: str, slot: int) -> Factors:
    return {p: (bank.B[slot].detach().float().clone(), bank.A[slot].detach().float().clone()) for p, bank in hive.core.named_banks(level)}


@torch.no_grad()
def pattern_kept(hive: Any, level: str, slot: int, planted: Factors) -> float:
    """The planted pattern's part of ``slot``'s ΔW now, as a share of the planted ΔW: ``⟨ΔW, ΔW₀⟩ / ‖ΔW₀‖²`` summed over
    modules (``⟨B·A, B₀·A₀⟩ = Σ (BᵀB₀) ⊙ (A·A₀ᵀ)``, no dense ΔW). Unlike the slot's norm it does not count what decay
    toward ``A0`` adds beside the pattern (``B·A0``, the init rows' random input directions)."""
    now = factors(hive, level, slot)
    num = den = 0.0
    for p, (b0, a0) in planted.items():
        b, a = now[p]
        num += float(((b.T @ b0) * (a @ a0.T)).sum())
        den += float(((b0.T @ b0) * (a0 @ a0.T)).sum())
    return num / den if den > 0 else 0.0


def sweep(hive: Any, world: c.World, cfg: ScreeningConfig, freqs: list[float], ticks: int, norm: float, batch: int, seed: int) -> list[dict[str, float]]:
    """Up then down over ``freqs``; per block: frequency, direction, screened share, kept norm (:func:`pattern_kept`) and the slot's norm."""
    core = hive.core
    ann, bob = core.slot_of("agent", "ann"), core.slot_of("agent", "bob")
    screening = Screening(cfg, ["agent"])
    rng = random.Random(seed)
    pool = [ex for t in c.TASKS for ex in world.suite[t].train]
    plant(hive, "agent", ann, c.delta(world, hive, norm * world.universal))
    out = []
    tick = 0
    for direction, values in (("up", freqs), ("down", freqs[::-1])):
        for f in values:
            planted = plant(hive, "agent", bob, c.delta(world, hive, norm * world.local["agnews"]))
            start = float(c.energy(hive, "agent", [bob])[0].sqrt())
            screened = 0
            for _ in range(ticks):
                tick += 1
                support = {"ann": rng.sample(pool, batch)}
                if rng.random() < f:
                    support["bob"] = rng.sample(world.suite["agnews"].train, batch)
                act = hive.activity(support, ["agent"])
                view = TickView(tick, "decay", [], (), {}, core.states, core, activity=lambda levels, a=act: a)
                screening.run(view)
                screened += int(screening.screened["agent"][bob, 0])
            slot_norm = float(c.energy(hive, "agent", [bob])[0].sqrt()) / start  # the slot's whole ΔW norm, for the record
            out.append({"f": f, "direction": direction, "screened": screened / ticks, "kept": pattern_kept(hive, "agent", bob, planted), "slot_norm": slot_norm})
    return out


def threshold(blocks: list[dict[str, float]], direction: str) -> float:
    """The lowest frequency of the sweep at which bob's pattern was screened at least half the block (1.01: never)."""
    hit = [b["f"] for b in blocks if b["direction"] == direction and b["screened"] >= 0.5]
    return min(hit) if hit else 1.01


def sharpness(blocks: list[dict[str, float]]) -> float:
    """Largest change of kept norm between neighbouring frequencies of the up-sweep, over its total change."""
    kept = [b["kept"] for b in blocks if b["direction"] == "up"]
    steps = [abs(b - a) for a, b in zip(kept, kept[1:], strict=False)]
    total = max(kept) - min(kept)
    return max(steps) / total if total > 1e-9 else 0.0


def run(size: str, out: Path, seeds: list[int], base: str | None = None) -> dict[str, Any]:
    r = c.begin(5, size, seeds, base)
    spec = r.spec
    hive = c.make_hive(r.base, ["ann", "bob"])
    world = c.build_world(hive, spec["train"])
    main = ScreeningConfig(levels=["agent"], **spec["screening"])
    narrow = main.model_copy(update={"down": 0.99 * main.up})
    variants = {"hysteresis": main, "control: narrow band": narrow}
    runs: dict[str, dict[str, Any]] = {}
    for name, cfg in variants.items():
        per_seed = {str(s): sweep(hive, world, cfg, spec["frequencies"], spec["ticks"], spec["norm"], spec["batch"], s) for s in c.each(r, seeds, name)}
        seed_figures = {s: {"f_up": threshold(b, "up"), "f_down": threshold(b, "down"), "sharpness": sharpness(b)} for s, b in per_seed.items()}
        for x in seed_figures.values():
            x["width"] = x["f_up"] - x["f_down"]
        runs[name] = {
            "config": cfg.model_dump(),
            "blocks": per_seed,
            "per_seed": seed_figures,
            **{k: c.mean_spread([x[k] for x in seed_figures.values()]) for k in ("f_up", "f_down", "width", "sharpness")},
        }
    results = {"frequencies": spec["frequencies"], "ticks_per_frequency": spec["ticks"], "variants": runs, "control": "control: narrow band"}
    return c.finish(r, out, results, CRITERION, markdown, plot, judge)


def judge(results: dict[str, Any]) -> tuple[str, str]:
    """The criterion per seed: the hysteresis variant's width > 0 and above the narrow-band control's (same seed),
    and its up-sweep sharpness ≥ 0.5, each in every seed (:func:`common.judged`)."""
    main, control = results["variants"]["hysteresis"]["per_seed"], results["variants"][results["control"]]["per_seed"]
    seeds = list(main)
    width, control_width, sharp = [main[s]["width"] for s in seeds], [control[s]["width"] for s in seeds], [main[s]["sharpness"] for s in seeds]
    wide = [w > 0 for w in width]
    wider = [w > cw for w, cw in zip(width, control_width, strict=True)]
    sharp_ok = [x >= 0.5 for x in sharp]
    return c.judged([
        (f"width {c.over_seeds(width, 2)} > 0", wide),
        (f"width > the control's {c.over_seeds(control_width, 2)}", wider),
        (f"sharpness {c.over_seeds(sharp, 2)} ≥ 0.5", sharp_ok),
    ])  # fmt: skip


def markdown(m: dict[str, Any]) -> str:
    columns = [("f up (screened ≥ ½)", "f_up", 2), ("f down", "f_down", 2), ("width", "width", 2), ("sharpness", "sharpness", 2)]
    curve = [["variant", "direction"] + [f"{f:g}" for f in m["frequencies"]]]
    for name, r in m["variants"].items():
        for d in ("up", "down"):
            kept = {f: [b["kept"] for bl in r["blocks"].values() for b in bl if b["direction"] == d and b["f"] == f] for f in m["frequencies"]}
            curve.append([name, f"{d}, kept norm"] + [f"{sum(v) / len(v):.3f}" for v in kept.values()])
    return c.report(
        m, "", c.summary_table(["variant"], c.named(m["variants"]), columns),
        "Stability (norm bob's pattern keeps over a block), mean over seeds:", c.table(curve),
    )  # fmt: skip


def plot(m: dict[str, Any], path: Path) -> None:
    fig, axes = c.panels()
    for ax, key, label in ((axes[0], "screened", "share of ticks screened"), (axes[1], "kept", "norm kept over a block")):
        for (name, r), color in zip(m["variants"].items(), ("C0", "C1"), strict=False):
            for d, style in (("up", "-o"), ("down", "--s")):
                ys = [sum(b[key] for bl in r["blocks"].values() for b in bl if b["direction"] == d and b["f"] == f) / len(r["blocks"]) for f in m["frequencies"]]
                ax.plot(m["frequencies"], ys, style, color=color, label=f"{name}, {d}")
        ax.set_xlabel("usage frequency of bob's pattern")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    c.save_figure(fig, path, f"Experiment 5: screening vs usage frequency ({m['size']}, {m['base']})")


if __name__ == "__main__":
    sys.exit(c.main(__doc__, run, markdown))
