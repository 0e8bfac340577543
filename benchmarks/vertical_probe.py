"""Does vertical resonance see two levels learning the same thing? A measurement on a tiny model.

Per tick the agent level learns 4 AG News examples; the swarm level learns either the same
4 examples ("same") or 4 Yelp examples ("other"). Vertical resonance's cosine between the two
levels' updates (``ema = 0``) is printed per tick for both, once with the module inputs of the
previous tick's learning forward as probes (what the mechanism does) and once with random
input probes (what it did first). If the sketch compares learning directions, "same" sits
well above "other".

    .venv/bin/python benchmarks/vertical_probe.py [--ticks 6]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import make_model, make_tokenizer, small_stack  # noqa: E402
from lorahive import Hive  # noqa: E402
from lorahive.config import VerticalResonanceConfig  # noqa: E402
from lorahive.mechanisms.base import TickView  # noqa: E402
from lorahive.mechanisms.vertical_resonance import VerticalResonance  # noqa: E402
from lorahive.suites.demo import load_demo  # noqa: E402


def cosines(same: bool, ticks: int, real_inputs: bool) -> list[float | None]:
    tok = make_tokenizer()
    hive = Hive(make_model(len(tok)), tok, small_stack(), seed=0)
    hive.add_agents(["ann", "bob"])
    stack = hive.core.stack
    vr = VerticalResonance(
        VerticalResonanceConfig(enabled=True, ema=0.0), ["swarm", "agent"],
        {lv.name: lv.lr for lv in stack.levels}, {lv.name: lv.inertia for lv in stack.levels},
    )  # fmt: skip
    news, reviews = load_demo("agnews").train, load_demo("yelp").train
    gen = torch.Generator().manual_seed(0)
    out: list[float | None] = []
    for t in range(ticks + 1):
        vr.run(TickView(t + 1, "draw", [], (), {}, hive.core.states, hive.core, shared={}))
        mine = [(p[-90:], " " + a) for p, a in news[4 * t : 4 * t + 4]]  # the tiny model's context is short
        theirs = mine if same else [(p[-90:], " " + a) for p, a in reviews[4 * t : 4 * t + 4]]
        hive.watch_activity([], inputs=8)
        hive.learn({"ann": mine, "bob": theirs}, steps=1, levels=[])  # a forward that only looks (no level moves)
        hive.watched_activity()
        seen = hive.watched_inputs()
        if not real_inputs:
            seen = {k: torch.randn(v.shape, generator=gen) for k, v in seen.items()}
        hive.learn({"ann": mine}, steps=1, levels=["agent"])
        hive.learn({"ann": theirs, "bob": theirs}, steps=1, levels=["swarm"])
        action = vr.run(TickView(t + 1, "apply", [], (), {}, hive.core.states, hive.core, shared={"module_inputs": seen}))
        if action is not None:  # the first tick only keeps its inputs
            out.append(action.detail["cosine"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=6)
    args = ap.parse_args()
    for probes, real in (("module inputs", True), ("random inputs", False)):
        for name, same in (("same data", True), ("other data", False)):
            cs = cosines(same, args.ticks, real)
            print(f"{probes:>13}, {name:>10}: " + " ".join("–" if c is None else f"{c:+.3f}" for c in cs))


if __name__ == "__main__":
    main()
