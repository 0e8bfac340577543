"""Where the time of one hive forward goes on the GPU: torch.profiler tables, bare vs hive.

    PYTHONPATH=src python benchmarks/gpu/profile_forward.py [--arch qwen2.5-0.5b] [--agents 8] [--fleet 8]

Three tables: the bare forward, the hive's live forward, and the kernels of the captured forward
(core/captured.py: pooled levels, dense per-row levels for a small fleet) run eagerly — the same kernels a
replay of its graph launches, so their GPU times are the graph's; the launches themselves are what the
graph removes. ``--shapes`` groups each table by input shape (which call is which). ``--fleet`` is the agents the banks hold (≤ 21 runs the per-row levels densely).
"""

from __future__ import annotations

import argparse

import torch
from common import build, random_ids, randomize_b, word_tokenizer
from forward import forward_fn
from torch.profiler import ProfilerActivity, profile

from lorahive import Hive, default_levels
from lorahive.core import CapturedForward


def show(label: str, fn, shapes: bool = False) -> None:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=shapes) as prof:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
    print(f"### {label} (3 forwards{', by input shape' if shapes else ''})", flush=True)
    table = prof.key_averages(group_by_input_shape=shapes).table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60, max_shapes_column_width=90)
    print(table, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="qwen2.5-0.5b")
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--fleet", type=int, default=None, help="agents the banks hold (default: --agents)")
    ap.add_argument("--shapes", action="store_true", help="group each table by the operators' input shapes (which call is which)")
    args = ap.parse_args()
    model = build(args.arch)
    ids = random_ids(64, 128)
    show("bare", forward_fn(model, ids), args.shapes)
    hive = Hive(model, word_tokenizer(), default_levels())
    hive.add_agents([f"a{i}" for i in range(args.fleet or args.agents)])
    randomize_b(hive)
    agents = [f"a{i % args.agents}" for i in range(64)]
    show(f"hive K={args.agents}", forward_fn(model, ids, hive, agents), args.shapes)
    for merged in (False, True):
        cap = CapturedForward(hive.core, 64, 128, graph=False, merged=merged)
        show(f"captured{' merged' if merged else ''} K={args.agents}, its kernels run eagerly", lambda cap=cap: cap(ids, agents, clone=False), args.shapes)


if __name__ == "__main__":
    main()
