"""Can context modes' router tell task types apart? A measurement on the embedded SmolLM2-135M.

For every demo task type, ``--tasks`` tasks of 4 training prompts each are read the way the
router reads them (``pooled_prompts``: the base model's final hidden state averaged over each
prompt's tokens, then over the task's prompts). Printed: the cosines between tasks of the same
type and of different types — raw, centred on the mean of all tasks (what the router does),
and centred on a mix where one type has twice the tasks of the others (the centre the router
would hold after a stage of that type). The router opens a mode below ``open_below``.
Then a stream as a run sees it: the types one after another, ``--ticks`` ticks each of
``--agents`` tasks of one type, routed by each rule (``spread`` and ``cosine``) over 4 modes,
with the modes each tick's tasks took printed per rule, and the mode each type's held-out
prompts pick at evaluation (``at_inference``: the nearest opened mode by the rule's measure).
With ``--root`` the stream is a CL benchmark's types in ``--order`` instead of the demo slice,
each tick's tasks drawn as a run draws them (``--support`` prompts, cut at ``--max-tokens``).

    .venv/bin/python benchmarks/context_router.py [--tasks 4] [--ticks 3 --agents 4]
    .venv/bin/python benchmarks/context_router.py --root ../shared/data/cl/standard \
        --order agnews,amazon,dbpedia,yahoo,yelp --agents 8 --support 8 --modes 4 --open-spread 4
"""

from __future__ import annotations

import argparse
import random

import torch

from lorahive import Hive
from lorahive.config import ContextModesConfig
from lorahive.mechanisms.context_modes import ContextModes, pooled_prompts
from lorahive.suites.cl import CLData, load_cl_suite, sample_task
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
    parser.add_argument("--root", default=None, help="stream: a CL benchmark folder (task-type sub-folders) instead of the demo slice")
    parser.add_argument("--order", default=None, help="stream: comma-separated task types of --root, in stream order")
    parser.add_argument("--support", type=int, default=4, help="stream: prompts per task")
    parser.add_argument("--max-tokens", type=int, default=128, help="stream: prompts cut at this many tokens, as suite.max_prompt_tokens")
    parser.add_argument("--eval-prompts", type=int, default=100, help="stream: held-out prompts per type that pick its mode at evaluation")
    parser.add_argument("--modes", default="4", help="stream: context modes (K); comma-separated values are each routed")
    parser.add_argument("--open-spread", default="4.0", help="stream: the spread rule's open_spread; comma-separated values are each routed")
    parser.add_argument("--stream-only", action="store_true", help="skip the pairwise cosines; the stream alone")
    args = parser.parse_args()
    torch.set_num_threads(2)
    hive = Hive.load()
    hive.add_agent("reader")
    suite = load_cl_suite(args.root, args.order.split(",") if args.order else None) if args.root else load_demo_suite()
    if not args.stream_only:
        _pairs(hive, args.tasks)
    _stream(hive, suite, args)


def _pairs(hive: Hive, tasks: int) -> None:
    """Cosines between tasks of the same and of different demo types: raw and centred."""
    vectors, types = [], []
    for task_type, data in load_demo_suite().items():
        rng = random.Random(0)
        for _ in range(tasks):
            prompts = [p for p, _ in rng.sample(data.train, 4)]
            vectors.append(pooled_prompts(hive.core, prompts).mean(0))
            types.append(task_type)
    v = torch.stack(vectors)  # (tasks, H)
    first = [i for i, t in enumerate(types) if t == types[0]]
    others = [i for i, t in enumerate(types) if t != types[0]][::tasks]
    skewed = v[first + first + others].mean(0)
    print(f"{len(types)} tasks of {len(set(types))} types")
    print(f"raw:                         {_spread(v, types)}")
    print(f"centred on all tasks:        {_spread(v - v.mean(0), types)}")
    print(f"centred on a {types[0]}-heavy mix: {_spread(v - skewed, types)}")


def _task_vector(hive: Hive, data: CLData, n: int, max_tokens: int, seed: int) -> torch.Tensor:
    task = sample_task(data, n, 1, seed, hive.tokenizer, max_tokens)
    return pooled_prompts(hive.core, [p for p, _ in task.support]).mean(0)


def _stream(hive: Hive, suite: dict[str, CLData], args: argparse.Namespace) -> None:
    """Each rule's modes per tick over a stream of ``suite``'s types, one type per stage, and each type's mode at evaluation."""
    stages = [(t, [torch.stack([_task_vector(hive, d, args.support, args.max_tokens, 1000 * k + a) for a in range(args.agents)]) for k in range(args.ticks)]) for t, d in suite.items()]
    held_out = {t: pooled_prompts(hive.core, sample_task(d, 1, min(args.eval_prompts, len(d.test)), 7919, hive.tokenizer, args.max_tokens).query_prompts).mean(0) for t, d in suite.items()}
    settings = [("spread", k, float(x)) for k in args.modes.split(",") for x in args.open_spread.split(",")] + [("cosine", k, 4.0) for k in args.modes.split(",")]
    for rule, modes, open_spread in settings:
        cfg = ContextModesConfig(enabled=True, modes=int(modes), open_rule=rule, open_spread=open_spread)  # the other thresholds: the defaults
        router = ContextModes(cfg, "context")
        line = [f"{t}:{''.join(map(str, router.route_inputs(vectors).modes))}" for t, ticks_of in stages for vectors in ticks_of]
        name = f"{rule} rule, {modes} modes" + (f", open_spread {open_spread:g}" if rule == "spread" else "")
        print(f"stream, {name}: {' '.join(line)}")
        print(f"evaluation, {name}: {' '.join(f'{t}->{router.nearest(v)}' for t, v in held_out.items())}")


if __name__ == "__main__":
    main()
