"""GPU training speed: a batched 5-level multi-agent hive step against PEFT LoRA steps.

    PYTHONPATH=src python benchmarks/gpu/train.py --arch qwen2.5-0.5b --agents 1 8 64 256

Prints, as each is measured:
  R4  one hive ``learn`` step, 5 levels, K agents ÷ one PEFT LoRA (r16, 7 projections,
      torch AdamW) step on the same tokens — and the same for forward+backward alone;
  R5  K sequential PEFT per-agent steps (one row of 64 tokens each, cycling through 8 PEFT
      adapters, each with its own AdamW) ÷ one batched hive step over the same K rows.
Beside them: the largest difference of the answer loss between the hive and agent a0
exported to one exact PEFT adapter, on a0's rows, before any step.

R4 batch: 64 rows × 128 tokens (96 prompt + 32 answer) for K ≤ 64; 256 rows × 32 tokens
(24 + 8) for K = 256. Steps are timed with the GPU synchronised before and after.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from common import build, emit, export_agent, randomize_b, twin_of, unwrap, word_tokenizer, words
from peft import LoraConfig, PeftModel, get_peft_model

from lorahive import Hive, default_levels
from lorahive.config import DEFAULT_TARGETS
from lorahive.learning.batching import Batch, pack_examples
from lorahive.learning.objective import answer_nll


def wall_ms(fn: Callable[[], object], warmup: int = 2, reps: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def examples(rows: int, prompt: int, answer: int, k: int, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """``rows`` examples, row i owned by agent a{i % k}."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, list[tuple[str, str]]] = {}
    for i in range(rows):
        out.setdefault(f"a{i % k}", []).append((words(prompt, gen), words(answer, gen)))
    return out


def flat(ex: dict[str, list[tuple[str, str]]]) -> list[tuple[str, str]]:
    return [row for rows in ex.values() for row in rows]


def peft_step(model, opt: torch.optim.Optimizer, batch: Batch, step: bool = True) -> None:
    opt.zero_grad(set_to_none=True)
    total, count = answer_nll(model, batch)
    (total.sum() / count.sum()).backward()
    if step:
        opt.step()


def hive_fwd_bwd(hive: Hive, batch: Batch, owners: list[str]) -> None:
    hive.model.zero_grad(set_to_none=True)
    with hive.core.routing.use(hive.core.route(owners)):
        total, count = answer_nll(hive.model, batch)
    (total.sum() / count.sum()).backward()


def loss_difference(hive: Hive, peft: PeftModel, tok) -> float:
    """Max |Δ answer NLL| per row, hive vs agent a0's exact PEFT export, on 8 rows of a0."""
    ex = examples(8, 96, 31, 1, seed=5)
    batch = pack_examples(tok, flat(ex), 4096).to("cuda")
    with torch.no_grad():
        with hive.core.routing.use(hive.core.route(["a0"] * 8)):
            ours, n = answer_nll(hive.model, batch)
        export_agent(peft, hive, "a0", "export")
        theirs, _ = answer_nll(unwrap(peft), batch)
    return float(((ours - theirs) / n).abs().max())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="qwen2.5-0.5b")
    ap.add_argument("--agents", type=int, nargs="+", default=[1, 8, 64, 256])
    ap.add_argument("--r5-agents", type=int, nargs="+", default=None, help="K for R5 (default: --agents)")
    ap.add_argument("--rows", type=int, default=64, help="R4 rows for K ≤ rows (tokens fixed at rows × 128)")
    args = ap.parse_args()
    arch, ks = args.arch, args.agents
    print(f"# {arch} on {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    tok = word_tokenizer()
    model = build(arch)
    twin = twin_of(model, arch)
    cfg = LoraConfig(r=16, lora_alpha=16, target_modules=list(DEFAULT_TARGETS), lora_dropout=0.0)
    peft = get_peft_model(twin, cfg, adapter_name="p0")  # type: ignore[arg-type]
    for i in range(1, 8):
        peft.add_adapter(f"p{i}", cfg)
    hive = Hive(model, tok, default_levels())
    hive.add_agents([f"a{i}" for i in range(max(ks))])
    randomize_b(hive)
    diff = loss_difference(hive, peft, tok)
    emit(arch=arch, figure="hive_vs_peft_answer_nll", max_abs_diff=diff)
    peft.delete_adapter("export")
    inner = unwrap(peft)
    opts = {}
    for i in range(8):
        peft.set_adapter(f"p{i}")
        opts[f"p{i}"] = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-4)
    peft.set_adapter("p0")
    model.train(), inner.train()
    for k in ks:
        rows, tokens = (args.rows, 128) if k <= args.rows else (k, args.rows * 128 // k)
        ex = examples(rows, tokens * 3 // 4, tokens // 4 - 1, k)  # + EOS = tokens
        owners = [a for a, rs in ex.items() for _ in rs]
        batch = pack_examples(tok, flat(ex), 4096).to("cuda")
        h = wall_ms(lambda ex=ex: hive.learn(ex, steps=1))
        p = wall_ms(lambda batch=batch: peft_step(inner, opts["p0"], batch))
        emit(arch=arch, figure="R4", K=k, rows=rows, tokens=tokens, hive_ms=h, peft_ms=p, ratio=h / p, target="<=1.10", peft_diff=diff)
        hf = wall_ms(lambda batch=batch, owners=owners: hive_fwd_bwd(hive, batch, owners))
        pf = wall_ms(lambda batch=batch: peft_step(inner, opts["p0"], batch, step=False))
        emit(arch=arch, figure="R4_fwd_bwd", K=k, hive_ms=hf, peft_ms=pf, ratio=hf / pf, peft_diff=diff)
    for k in args.r5_agents or ks:
        ex = examples(k, 48, 15, k, seed=11)  # + EOS = 64 tokens
        single = {a: pack_examples(tok, rs, 4096).to("cuda") for a, rs in ex.items()}

        def sequential(single=single) -> None:
            for i, b in enumerate(single.values()):
                name = f"p{i % 8}"
                peft.set_adapter(name)
                peft_step(inner, opts[name], b)

        h = wall_ms(lambda ex=ex: hive.learn(ex, steps=1))
        s = wall_ms(sequential, warmup=1, reps=3)
        emit(arch=arch, figure="R5", K=k, tokens_per_agent=64, hive_ms=h, peft_sequential_ms=s, ratio=s / h, target=">=10", peft_diff=diff)
    model.zero_grad(set_to_none=True)
    print(f"# peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)


if __name__ == "__main__":
    main()
