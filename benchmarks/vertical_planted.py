"""Vertical resonance on the planted pattern types of ``tests/test_vertical_resonance_planted.py``, over many noise draws.

The test runs one noise draw (three for the task-local pattern); this prints, for ``--draws``
draws, each scenario's settled agreement (mean ``c`` after the first compared ticks) and its
mode per compared tick (``r`` resonant, ``d`` dissonant, ``n`` neutral), then the spread over
the draws and the task-local scenario's false-positive ticks — the seed's bound is 5 %. It
starts with each pattern's held-out loss change per task type.

    .venv/bin/python benchmarks/vertical_planted.py [--draws 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import test_vertical_resonance_planted as planted  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    world = planted.build_world()
    for kind, change in planted.usefulness(world).items():
        print(f"{kind:>9} pattern, held-out loss change: " + "  ".join(f"{t} {v:+.4f}" for t, v in change.items()))
    settled: dict[str, list[float]] = {kind: [] for kind in planted.ARRIVES}
    false_positive = 0
    for draw in range(args.draws):
        noise = planted.noise_draw(world, draw)
        row = []
        for kind in planted.ARRIVES:
            run = planted.plant(world, kind, noise)
            settled[kind].append(run.settled())
            row.append(f"{kind} {run.settled():+.2f} {''.join(m[0] for m in run.modes)}")
            if kind == "local":
                false_positive += sum(m != "neutral" for m in run.modes)
        print(f"draw {draw}: " + " | ".join(row), flush=True)
    for kind, cs in settled.items():
        print(f"{kind:>20}: settled c from {min(cs):+.2f} to {max(cs):+.2f}, mean {sum(cs) / len(cs):+.2f}")
    ticks = args.draws * (planted.TICKS - 1)
    print(f"task-local pattern boosted or damped on {false_positive} of {ticks} ticks ({100 * false_positive / ticks:.1f} %)")


if __name__ == "__main__":
    main()
