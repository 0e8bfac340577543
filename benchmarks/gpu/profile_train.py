"""Where the time of one hive training step goes: forward, backward, optimizer, against PEFT.

    PYTHONPATH=src python benchmarks/gpu/profile_train.py [--agents 64] [--table]

Qwen2.5-0.5B architecture, 64 rows × 128 tokens (the R4 batch of ``train.py``), default
5-level stack with random B. Each phase is timed on its own with the GPU synchronised
around it (median of 5). The hive runs twice: with the fused path's single autograd node
(``fused_train._FusedLoRA``, the default) and with plain autograd through the same fused ops (the
path before it). ``--table`` adds a torch.profiler table of the hive's forward + backward.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch
from common import build, randomize_b, twin_of, unwrap, word_tokenizer
from peft import LoraConfig, get_peft_model
from torch.profiler import ProfilerActivity, profile
from train import examples, flat

from lorahive import Hive, default_levels
from lorahive.adapters import fused, fused_train, layer
from lorahive.config import DEFAULT_TARGETS
from lorahive.learning.batching import pack_examples
from lorahive.learning.objective import answer_nll


def phases(fwd, bwd, opt, reps: int = 5) -> dict[str, float]:
    """Median milliseconds of each phase, synchronised around each."""
    times: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    for i in range(reps + 2):
        for name, fn in (("forward", fwd), ("backward", bwd), ("optimizer", opt)):
            torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            if i >= 2:
                times[name].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def cat_then_cast(parts: list[torch.Tensor], dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Variant of ``fused._cat``: one same-dtype concatenation, then one cast."""
    return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)).to(dtype)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=64)
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--pyprofile", action="store_true", help="cProfile of 3 hive forward+backward passes")
    args = ap.parse_args()
    k = args.agents
    tok = word_tokenizer()
    model = build("qwen2.5-0.5b")
    twin = twin_of(model, "qwen2.5-0.5b")
    hive = Hive(model, tok, default_levels())
    hive.add_agents([f"a{i}" for i in range(k)])
    randomize_b(hive)
    model.train()
    ex = examples(64, 96, 31, k)
    owners = [a for a, rs in ex.items() for _ in rs]
    batch = pack_examples(tok, flat(ex), 4096).to("cuda")
    update = [lv for lv in hive.levels if lv.trainable]
    idx = torch.arange(k, device="cuda")
    one = torch.zeros(1, dtype=torch.long, device="cuda")
    box: dict[str, torch.Tensor] = {}

    def h_fwd() -> None:
        hive.model.zero_grad(set_to_none=True)
        with hive.core.routing.use(hive.core.route(owners, training=[lv.name for lv in update])):
            total, count = answer_nll(hive.model, batch)
        box["loss"] = total.sum() / count.sum()

    @torch.no_grad()
    def h_nograd() -> None:
        with hive.core.routing.use(hive.core.route(owners)):
            answer_nll(hive.model, batch)

    def h_opt() -> None:
        for lv in update:
            hive.core.optimizers[lv.name].step(hive.core.level_params(lv.name), one if lv.scope == "shared" else idx)

    cat_out = fused._cat
    for label in ("one autograd node", "one node, cat then cast", "plain autograd"):
        fused._cat = cat_then_cast if label == "one node, cat then cast" else cat_out  # type: ignore[assignment]
        if label == "plain autograd":  # the fused ops recorded op by op, as before _FusedLoRA
            layer.fused_forward = lambda lay, x, y, routing: fused.apply(fused.prepare(lay, routing, x.dtype), x, y)  # type: ignore[assignment]
        h = phases(h_fwd, lambda: box["loss"].backward(), h_opt)
        ng = phases(h_nograd, lambda: None, lambda: None)["forward"]
        print(f"hive K={k} ({label}): " + "  ".join(f"{n} {v:.1f} ms" for n, v in h.items()) + f"  total {sum(h.values()):.1f} ms  (no-grad forward {ng:.1f} ms)", flush=True)
    layer.fused_forward = fused_train.fused_forward
    peft = get_peft_model(twin, LoraConfig(r=16, lora_alpha=16, target_modules=list(DEFAULT_TARGETS), lora_dropout=0.0))  # type: ignore[arg-type]
    inner = unwrap(peft)
    inner.train()
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-4)

    def p_fwd() -> None:
        opt.zero_grad(set_to_none=True)
        total, count = answer_nll(inner, batch)
        box["loss"] = total.sum() / count.sum()

    p = phases(p_fwd, lambda: box["loss"].backward(), opt.step)
    print("peft r16: " + "  ".join(f"{n} {v:.1f} ms" for n, v in p.items()) + f"  total {sum(p.values()):.1f} ms", flush=True)
    if args.pyprofile:
        prof_py = cProfile.Profile()
        prof_py.enable()
        for _ in range(3):
            h_fwd()
            box["loss"].backward()
        torch.cuda.synchronize()
        prof_py.disable()
        pstats.Stats(prof_py).sort_stats("tottime").print_stats(25)
    if args.table:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            h_fwd()
            box["loss"].backward()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=50), flush=True)


if __name__ == "__main__":
    main()
