"""How many agents fit resident and trainable on one GPU (Qwen2.5-0.5B, default 5-level stack).

    PYTHONPATH=src python benchmarks/gpu/capacity.py [--max 4096] [--memory resident|lean]
    PYTHONPATH=src python benchmarks/gpu/capacity.py --cpu-estimate [--agents 64]

Per size (64, 128, …, ``--max`` agents) a fresh hive gets all its agents at once (a bank
grown by doubling would hold the old and the new bank at the grow) and runs one ``learn``
step for 64 of them; it records the memory held after the step, the peak during it, and the
bytes per agent read from the tensors allocated (lorahive.core.footprint). Stops at the first
out-of-memory error. Per-agent levels: agent r8 + context r4 (6.60 M parameters per agent).

``--memory resident`` keeps today's layout: float32 banks with their init snapshot and both
AdamW moments on the GPU. ``--memory lean`` regenerates the init from its seed
(``MemorySpec.store_init=False``) and keeps the moments on the host, rows only for slots that
trained (``host_moments=True``); the whole-bank gradient of a step remains (adapters/fused.py).

``--cpu-estimate`` builds the same architecture on the CPU (a 2,000-word vocabulary: the
embedding holds no adapter), registers ``--agents`` agents, trains them once in both layouts,
and prints the bytes per agent of each part from the tensor sizes, with the time of a learn
step and of a decay toward init side by side: the figure can be checked without a GPU.
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
from common import build, emit, qwen_05b, word_tokenizer, words
from transformers import AutoModelForCausalLM

from lorahive import Hive, default_levels
from lorahive.config import MemorySpec
from lorahive.core import footprint

LAYOUTS = {"resident": MemorySpec(), "lean": MemorySpec(store_init=False, host_moments=True)}
MiB = 2**20


def step(hive: Hive, first: int, gen: torch.Generator, n: int = 64, prompt: int = 48, answer: int = 15) -> None:
    """One learn step for ``n`` agents starting at index ``first`` (one row of ``prompt + answer`` tokens each)."""
    ex = {f"a{i}": [(words(prompt, gen), words(answer, gen))] for i in range(first, first + n)}
    hive.learn(ex, steps=1)


def per_agent(hive: Hive) -> dict[str, float]:
    """Bytes per agent from the tensors allocated, in MiB (the footprint's per-slot figures)."""
    return {k: round(v / MiB, 2) for k, v in footprint(hive.core).per_slot().items()}


def host_row_bytes(hive: Hive) -> float:
    """Host bytes of one trained agent's moment rows, over its per-agent levels (0 when the moments are resident)."""
    opts = [hive.core.optimizers[lv.name] for lv in hive.levels if lv.scope != "shared"]
    return sum(o.pages.nbytes() / o.pages.capacity for o in opts if o.host and o.pages.capacity)


def gpu(args: argparse.Namespace) -> None:
    memory = LAYOUTS[args.memory]
    print(f"# qwen2.5-0.5b capacity on {torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB, memory={args.memory} {memory}", flush=True)
    gen = torch.Generator().manual_seed(0)
    n, last_ok, hive = 64, 0, None
    while n <= args.max:
        del hive
        gc.collect()
        torch.cuda.empty_cache()
        hive = Hive(build("qwen2.5-0.5b"), word_tokenizer(), default_levels(), memory=memory)
        base = torch.cuda.memory_allocated() / MiB
        try:
            hive.add_agents([f"a{i}" for i in range(n)])
            torch.cuda.reset_peak_memory_stats()
            step(hive, n - 64, gen)
        except torch.OutOfMemoryError:
            emit(figure="capacity", memory=args.memory, agents=n, status="out of memory")
            break
        held = torch.cuda.memory_allocated() / MiB
        peak = torch.cuda.max_memory_allocated() / MiB
        emit(
            figure="capacity", memory=args.memory, agents=n, status="ok", base_MiB=base, held_MiB=held, step_peak_MiB=peak,
            held_MiB_per_agent=(held - base) / n, peak_MiB_per_agent=(peak - base) / n, host_GiB=footprint(hive.core).moments_host / 2**30,
            host_MiB_per_trained_agent=host_row_bytes(hive) / MiB,
            tensors_MiB_per_agent=per_agent(hive),
        )  # fmt: skip
        last_ok = n
        n *= 2
    emit(figure="capacity_max", memory=args.memory, agents_resident_trainable=last_ok, target=">=4096 at <=30 MiB per agent")


def cpu_estimate(args: argparse.Namespace) -> None:
    """Both layouts on the CPU: bytes per agent by part, and what each costs in time."""
    torch.manual_seed(0)
    cfg = qwen_05b()
    cfg.vocab_size = 2002
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    names = [f"a{i}" for i in range(args.agents)]
    for layout, memory in LAYOUTS.items():
        hive = Hive(model, word_tokenizer(), default_levels(), memory=memory)
        hive.add_agents(names)
        gen = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        step(hive, 0, gen, n=args.agents, prompt=4, answer=2)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        step(hive, 0, gen, n=args.agents, prompt=4, answer=2)
        again = time.perf_counter() - t0
        slots = list(range(args.agents))
        t0 = time.perf_counter()
        hive.core.decay_toward_init("agent", slots, 0.01)
        decay = time.perf_counter() - t0
        emit(
            figure="cpu_estimate", memory=layout, agents=args.agents, MiB_per_agent=per_agent(hive),
            host_MiB_per_trained_agent=round(host_row_bytes(hive) / MiB, 2),
            learn_step_s=round(again, 2), first_learn_step_s=round(first, 2), decay_all_agents_s=round(decay, 3),
        )  # fmt: skip
        for layer in hive.core.layers.values():  # unwrap, so the next layout wraps the bare model again
            parent_path, _, leaf = layer.name.rpartition(".")
            setattr(model.get_submodule(parent_path), leaf, layer.base)
        del hive
        gc.collect()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max", type=int, default=4096)
    ap.add_argument("--memory", choices=sorted(LAYOUTS), default="lean")
    ap.add_argument("--cpu-estimate", action="store_true", help="bytes per agent from tensor sizes on the CPU, both layouts")
    ap.add_argument("--agents", type=int, default=64, help="--cpu-estimate: agents registered and trained")
    args = ap.parse_args()
    cpu_estimate(args) if args.cpu_estimate else gpu(args)


if __name__ == "__main__":
    main()
