"""How many agents fit resident and trainable on one GPU (Qwen2.5-0.5B, default 5-level stack).

    PYTHONPATH=src python benchmarks/gpu/capacity.py [--max 4096] [--memory resident|paged|lean|lean-bf16]
    PYTHONPATH=src python benchmarks/gpu/capacity.py --cpu-estimate [--agents 128] [--trained 64]
    PYTHONPATH=src python benchmarks/gpu/capacity.py --cpu-estimate --slot-grads-ab [--agents 128] [--trained 64] [--repeat 3]

Per size (64, 128, …, ``--max`` agents) a fresh hive gets all its agents at once (a bank
grown by doubling would hold the old and the new bank at the grow) and runs one ``learn``
step for 64 of them; it records the memory held after the step, the peak during it, and the
bytes per agent read from the tensors allocated (lorahive.core.footprint). Stops at the first
out-of-memory error. Per-agent levels: agent r8 + context r4 (6.60 M parameters per agent).

``--memory resident`` keeps today's layout: float32 banks with their init snapshot and both
AdamW moments on the GPU. ``--memory paged`` regenerates the init from its seed
(``MemorySpec.store_init=False``) and keeps the moments on the host, rows only for slots that
trained (``host_moments=True``); a step's gradient is still shaped like the whole banks.
``--memory lean`` (the default) adds ``slot_grads=True``: the step's gradient holds rows for
its 64 slots only (adapters/slot_rows.py). ``--memory lean-bf16`` keeps the host moment rows in
bfloat16 as well (half the host bytes; not bit-identical).

``--cpu-estimate`` builds the same architecture on the CPU (a 2,000-word vocabulary: the
embedding holds no adapter), registers ``--agents`` agents, trains ``--trained`` of them in
each layout, and prints the bytes per agent of each part from the tensor sizes (the step's
peak also as it would be at 4,096 agents), with the time of a learn step and of a decay toward
init side by side: the figure can be checked without a GPU. ``--slot-grads-ab`` times the
row-sparse gradient against the dense one on one hive, step by step in turn.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch
from common import build, emit, qwen_05b, word_tokenizer, words
from transformers import AutoModelForCausalLM

from lorahive import Hive, default_levels
from lorahive.config import MemorySpec
from lorahive.core import footprint

LAYOUTS = {
    "resident": MemorySpec(),
    "paged": MemorySpec(store_init=False, host_moments=True),
    "lean": MemorySpec(store_init=False, host_moments=True, slot_grads=True),
    "lean-bf16": MemorySpec(store_init=False, host_moments=True, slot_grads=True, host_moments_dtype="bfloat16"),
}
MiB = 2**20
STEP = 64  # agents one learn step trains


def step(hive: Hive, first: int, gen: torch.Generator, n: int = 64, prompt: int = 48, answer: int = 15) -> None:
    """One learn step for ``n`` agents starting at index ``first`` (one row of ``prompt + answer`` tokens each)."""
    ex = {f"a{i}": [(words(prompt, gen), words(answer, gen))] for i in range(first, first + n)}
    hive.learn(ex, steps=1)


def per_agent(hive: Hive, trained: int = STEP) -> dict[str, float]:
    """Bytes per agent from the tensors allocated, in MiB (the footprint's per-slot figures, a step of ``trained`` slots)."""
    return {k: round(v / MiB, 2) for k, v in footprint(hive.core, step_slots=trained).per_slot().items()}


def peak_at(hive: Hive, agents: int, trained: int = STEP) -> float:
    """MiB per agent on the device at a step's peak, were ``agents`` registered (the bytes per slot scale; a slot_grads step's gradient does not)."""
    f = footprint(hive.core, step_slots=trained)
    gradient = f.gradient / agents if hive.core.memory.slot_grads else f.gradient / f.slots
    return round((f.device / f.slots + gradient) / MiB, 2)


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
    for layout in args.layouts.split(","):
        hive = Hive(model, word_tokenizer(), default_levels(), memory=LAYOUTS[layout])
        hive.add_agents(names)
        gen = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        step(hive, 0, gen, n=args.trained, prompt=4, answer=2)
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            step(hive, 0, gen, n=args.trained, prompt=4, answer=2)
            times.append(time.perf_counter() - t0)
        slots = list(range(args.trained))
        t0 = time.perf_counter()
        hive.core.decay_toward_init("agent", slots, 0.01)
        decay = time.perf_counter() - t0
        emit(
            figure="cpu_estimate", memory=layout, agents=args.agents, trained=args.trained, MiB_per_agent=per_agent(hive, args.trained),
            peak_MiB_per_agent_at_4096=peak_at(hive, 4096, args.trained),
            host_MiB_per_trained_agent=round(host_row_bytes(hive) / MiB, 2),
            learn_step_s=[round(t, 2) for t in times], first_learn_step_s=round(first, 2), decay_trained_agents_s=round(decay, 3),
        )  # fmt: skip
        for layer in hive.core.layers.values():  # unwrap, so the next layout wraps the bare model again
            parent_path, _, leaf = layer.name.rpartition(".")
            setattr(model.get_submodule(parent_path), leaf, layer.base)
        del hive
        gc.collect()


def slot_grads_ab(args: argparse.Namespace) -> None:
    """One ``paged`` hive on the CPU, learn steps of ``--trained`` agents alternating dense and row-sparse gradients (``LevelBank.slot_grads``): the option's cost in time, drift shared."""
    torch.manual_seed(0)
    cfg = qwen_05b()
    cfg.vocab_size = 2002
    hive = Hive(AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval(), word_tokenizer(), default_levels(), memory=LAYOUTS["paged"])
    hive.add_agents([f"a{i}" for i in range(args.agents)])
    gen = torch.Generator().manual_seed(0)
    step(hive, 0, gen, n=args.trained, prompt=4, answer=2)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeat):
        for on in (False, True):
            for layer in hive.core.layers.values():
                for bank in layer.banks.values():
                    bank.slot_grads = on  # type: ignore[assignment]
            t0 = time.perf_counter()
            step(hive, 0, gen, n=args.trained, prompt=4, answer=2)
            times[on].append(time.perf_counter() - t0)
    emit(
        figure="slot_grads_ab", agents=args.agents, trained=args.trained, dense_s=[round(t, 2) for t in times[False]], slot_grads_s=[round(t, 2) for t in times[True]],
        dense_median_s=round(statistics.median(times[False]), 2), slot_grads_median_s=round(statistics.median(times[True]), 2),
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max", type=int, default=4096)
    ap.add_argument("--memory", choices=sorted(LAYOUTS), default="lean")
    ap.add_argument("--cpu-estimate", action="store_true", help="bytes per agent from tensor sizes on the CPU, every layout")
    ap.add_argument("--agents", type=int, default=128, help="--cpu-estimate: agents registered")
    ap.add_argument("--trained", type=int, default=STEP, help="--cpu-estimate: agents a learn step trains")
    ap.add_argument("--repeat", type=int, default=3, help="--cpu-estimate: learn steps timed after the first")
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help="--cpu-estimate: the layouts, comma-separated")
    ap.add_argument("--slot-grads-ab", action="store_true", help="with --cpu-estimate: learn steps alternating dense and row-sparse gradients on one hive")
    args = ap.parse_args()
    if not args.cpu_estimate:
        gpu(args)
    elif args.slot_grads_ab:
        slot_grads_ab(args)
    else:
        cpu_estimate(args)


if __name__ == "__main__":
    main()
