"""Can context modes' router tell task types apart? A measurement on the embedded SmolLM2-135M.

For every demo task type, ``--tasks`` tasks of 4 training prompts each are read the way the
router reads them (``pooled_prompts``: the base model's final hidden state averaged over each
prompt's tokens, then over the task's prompts). Printed: the cosines between tasks of the same
type and of different types — raw, centred on the mean of all tasks (what the router does),
and centred on a mix where one type has twice the tasks of the others (the centre the router
would hold after a stage of that type). The router opens a mode below ``open_below``.
Then a stream as a run sees it: the types one after another, ``--ticks`` ticks each of
``--agents`` tasks of one type, routed by each rule (``spread`` and ``cosine``) over 4 modes,
with the modes each tick's tasks took printed per rule.

    .venv/bin/python benchmarks/context_router.py [--tasks 4] [--ticks 3 --agents 4]
"""

from __future__ import annotations

import argparse
import random

import torch

from lorahive import Hive
from lorahive.config import ContextModesConfig
from lorahive.mechanisms.context_modes import ContextModes, pooled_prompts
from lorahive.suites.demo import load_demo_suite


def _spread(vectors: torch.Tensor, types: list[str]) -> str:
    unit = vectors / vectors.norm(dim=1, keepdim=True)
    cos = unit @ unit.T
    same = [float(cos[i, j]) for i in range(len(types)) for j in range(i + 1, len(types)) if types[i] == types[j]]
    diff = [float(cos[i, j]) for i in range(len(types)) for j in range(i + 1, len(types)) if types[i] != types[j]]
    return f"same type min {min(same):+.2f} mean {sum(same) / len(same):+.2f}   different types max {max(diff):+.2f} mean {sum(diff) / len(diff):+.2f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=4, help="tasks of 4 prompts per task type")
    parser.add_argument("--ticks", type=int, default=3, help="stream: ticks per task type")
    parser.add_argument("--agents", type=int, default=4, help="stream: tasks of one type per tick")
    args = parser.parse_args()
    torch.set_num_threads(2)
    hive = Hive.load()
    hive.add_agent("reader")
    vectors, types = [], []
    for task_type, data in load_demo_suite().items():
        rng = random.Random(0)
        for _ in range(args.tasks):
            prompts = [p for p, _ in rng.sample(data.train, 4)]
            vectors.append(pooled_prompts(hive.core, prompts).mean(0))
            types.append(task_type)
    v = torch.stack(vectors)  # (tasks, H)
    first = [i for i, t in enumerate(types) if t == types[0]]
    others = [i for i, t in enumerate(types) if t != types[0]][:: args.tasks]
    skewed = v[first + first + others].mean(0)
    print(f"{len(types)} tasks of {len(set(types))} types")
    print(f"raw:                         {_spread(v, types)}")
    print(f"centred on all tasks:        {_spread(v - v.mean(0), types)}")
    print(f"centred on a {types[0]}-heavy mix: {_spread(v - skewed, types)}")
    _stream(hive, args.ticks, args.agents)


def _stream(hive: Hive, ticks: int, agents: int, modes: int = 4) -> None:
    """Each rule's modes per tick over a stream of the demo types, one type per stage."""
    rng = random.Random(1)
    stages = [(t, [torch.stack([pooled_prompts(hive.core, [p for p, _ in rng.sample(d.train, 4)]).mean(0) for _ in range(agents)]) for _ in range(ticks)]) for t, d in load_demo_suite().items()]
    for rule in ("spread", "cosine"):
        router = ContextModes(ContextModesConfig(enabled=True, modes=modes, open_rule=rule), "context")  # the defaults' thresholds
        line = [f"{t}:{''.join(map(str, router.route_inputs(vectors).modes))}" for t, ticks_of in stages for vectors in ticks_of]
        print(f"stream, {rule} rule: {' '.join(line)}")


if __name__ == "__main__":
    main()
