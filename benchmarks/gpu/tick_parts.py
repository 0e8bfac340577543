"""Where a hive tick's time goes on the GPU, part by part, against a baseline's learning step.

Random bf16 weights of a real architecture (default: SmolLM2-135M, the embedded model),
the full-size stream's shapes: 8 agents × 8 support examples, prompts of ``--tokens`` words,
8 query prompts per agent scored over ``--labels`` options. Prints the median wall time of
each part of the hive's solve phase, the compose/apply phases and a checkpoint, and the
same for a one-level seq-lora step, side by side in one process:

    python3 benchmarks/gpu/tick_parts.py [--arch smollm2-135m] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from common import build, word_tokenizer, words

from lorahive import Hive
from lorahive.adapters.fused import use_fused
from lorahive.config import default_levels
from lorahive.mechanisms.aggregation import Proposal
from lorahive.mechanisms.compose import build_aggregator
from lorahive.store import checkpoint


def wall(fn: Callable[[], object], reps: int) -> float:
    """Median wall-clock seconds of ``fn`` (synchronised before and after)."""
    times = []
    for _ in range(reps + 1):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="smollm2-135m")
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--labels", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    tok, gen = word_tokenizer(), torch.Generator().manual_seed(0)
    names = [f"a{i}" for i in range(a.agents)]
    support = {n: [(words(a.tokens, gen), " w1") for _ in range(8)] for n in names}
    query = [(n, words(a.tokens, gen)) for n in names for _ in range(8)]
    labels = [f" w{i + 1}" for i in range(a.labels)]
    hive = Hive(build(a.arch), tok, default_levels())
    hive.add_agents(names)
    agg = build_aggregator()
    out: dict[str, float] = {}
    out["reset context"] = wall(lambda: hive.reset_slots("context", names), a.reps)
    out["learn step (agent+context)"] = wall(lambda: hive.learn_async(support, levels=["agent", "context"]), a.reps)
    out["score (option_nll)"] = wall(lambda: hive.option_nll(query, labels), a.reps)
    out["score, chunks of 128"] = wall(lambda: hive.option_nll(query, labels, chunk=128), a.reps)
    out["propose"] = wall(lambda: hive.propose(support, "swarm"), a.reps)
    with use_fused("off"):
        out["propose, reference path"] = wall(lambda: hive.propose(support, "swarm"), a.reps)
    grads, _ = hive.propose(support, "swarm")
    props = [Proposal(n, "swarm", 1, g, 0.5, 0.5) for n, g in grads.items()]
    out["aggregate"] = wall(lambda: agg.aggregate(1, props), a.reps)
    update, _ = agg.aggregate(1, props)
    assert update is not None
    out["apply update"] = wall(lambda: hive.apply_update("swarm", update), a.reps)
    with tempfile.TemporaryDirectory() as d:
        out["checkpoint"] = wall(lambda: checkpoint.save(d, hive.core, {"tick": 1}, {}), 2)
    parts = ("reset context", "score (option_nll)", "propose", "aggregate", "apply update", "checkpoint")
    hive_tick = 2 * out["learn step (agent+context)"] + sum(out[k] for k in parts)
    base = Hive(build(a.arch), tok, [default_levels().get("swarm").model_copy(update={"inertia": 0.0})])
    base.add_agents(names)
    b_step = wall(lambda: base.learn_async(support, levels=["swarm"]), a.reps)
    b_score = wall(lambda: base.option_nll(query, labels), a.reps)
    with tempfile.TemporaryDirectory() as d:
        b_ckpt = wall(lambda: checkpoint.save(d, base.core, {"tick": 1}, {}), 2)
    for k, v in out.items():
        print(f"hive  {k:28s} {v * 1e3:8.1f} ms", flush=True)
    print(f"base  learn step (swarm)          {b_step * 1e3:8.1f} ms\nbase  score                       {b_score * 1e3:8.1f} ms\nbase  checkpoint                  {b_ckpt * 1e3:8.1f} ms")
    base_tick = 3 * b_step + b_score + b_ckpt / 5
    hive_tick = hive_tick - out["checkpoint"] + out["checkpoint"] / 5
    print(f"tick estimate (checkpoint every 5): hive {hive_tick:.3f} s, seq-lora {base_tick:.3f} s, ratio {hive_tick / base_tick:.2f}")


if __name__ == "__main__":
    main()
