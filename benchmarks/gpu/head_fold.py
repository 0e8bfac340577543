"""The output head's input folded or not, side by side: the captured forward's time with and without it.

    PYTHONPATH=src python benchmarks/gpu/head_fold.py [--arch qwen2.5-0.5b] [--agents 8] [--rounds 2]

``adapters/model.py`` gives the frozen model's head a contiguous input (``fold_head_input``), so the last position
runs as one ``mm`` over the vocabulary instead of a ``bmm`` that expands the vocabulary matrix per row. This removes
that hook for every other graph, alternating, and prints both times beside the bare forward (64 × 128 tokens,
``logits_to_keep=1``, K agents on 64 rows).
"""

from __future__ import annotations

import argparse

from common import build, median_ms, random_ids, randomize_b, word_tokenizer
from forward import forward_fn

from lorahive import Hive, default_levels
from lorahive.core import CapturedForward


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="qwen2.5-0.5b")
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    model = build(args.arch)
    ids = random_ids(64, 128)
    bare = median_ms(forward_fn(model, ids), 3, 10)
    print(f"arch={args.arch}  figure=bare_forward  ms={bare:.2f}", flush=True)
    hive = Hive(model, word_tokenizer(), default_levels())
    hive.add_agents([f"a{i}" for i in range(args.agents)])
    randomize_b(hive)
    agents = [f"a{i % args.agents}" for i in range(64)]
    head = model.get_output_embeddings()
    hooks = dict(head._forward_pre_hooks)
    for round_ in range(args.rounds):
        for folded in (True, False):
            head._forward_pre_hooks.clear()
            if folded:
                head._forward_pre_hooks.update(hooks)
            cap = CapturedForward(hive.core, 64, 128)
            ms = median_ms(lambda cap=cap: cap(ids, agents, clone=False), 3, 10)
            print(f"arch={args.arch}  figure=R1 captured  K={args.agents}  round={round_}  head_folded={folded}  ms={ms:.2f}  ratio={bare / ms:.3f}", flush=True)
    head._forward_pre_hooks.clear()
    head._forward_pre_hooks.update(hooks)


if __name__ == "__main__":
    main()
