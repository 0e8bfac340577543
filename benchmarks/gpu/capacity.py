"""How many agents fit resident and trainable on one GPU (Qwen2.5-0.5B, default 5-level stack).

    PYTHONPATH=src python benchmarks/gpu/capacity.py [--max 4096]

Doubles the number of agents (64, 128, …); at each size runs one ``learn`` step for 64 of
them (so every slot's optimizer state exists, as it does once the whole fleet has trained)
and records the memory held after the step and the peak during it. Stops at the first
out-of-memory error. Per-agent levels: agent r8 + context r4, fp32 banks with their init
snapshot, per-slot AdamW moments.
"""

from __future__ import annotations

import argparse

import torch
from common import build, emit, word_tokenizer, words

from lorahive import Hive, default_levels


def step(hive: Hive, first: int, gen: torch.Generator) -> None:
    """One learn step for 64 agents starting at index ``first`` (one 64-token row each)."""
    ex = {f"a{i}": [(words(48, gen), words(15, gen))] for i in range(first, first + 64)}
    hive.learn(ex, steps=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max", type=int, default=4096)
    args = ap.parse_args()
    print(f"# qwen2.5-0.5b capacity on {torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB", flush=True)
    hive = Hive(build("qwen2.5-0.5b"), word_tokenizer(), default_levels())
    per_agent = sum(lv.rank * (layer.in_features + layer.out_features) for layer in hive.core.layers.values() for lv in hive.levels if lv.scope != "shared")
    print(f"# per-agent parameters (agent r8 + context r4, all 7 projections, 24 layers): {per_agent / 1e6:.2f} M", flush=True)
    gen = torch.Generator().manual_seed(0)
    n, last_ok, prev = 64, 0, None
    while n <= args.max:
        try:
            hive.add_agents([f"a{i}" for i in range(len(hive.agents), n)])
            torch.cuda.reset_peak_memory_stats()
            step(hive, n - 64, gen)
        except torch.OutOfMemoryError:
            emit(figure="capacity", agents=n, status="out of memory")
            break
        held = torch.cuda.memory_allocated() / 2**20
        peak = torch.cuda.max_memory_allocated() / 2**20
        slope = None if prev is None else (held - prev[1]) / (n - prev[0])
        emit(figure="capacity", agents=n, status="ok", held_MiB=held, step_peak_MiB=peak, MiB_per_added_agent=slope if slope is not None else "n/a")
        last_ok, prev = n, (n, held)
        n *= 2
    emit(figure="capacity_max", agents_resident_trainable=last_ok, target=">=4096")


if __name__ == "__main__":
    main()
