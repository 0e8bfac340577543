"""CPU micro-benchmark: one 5-level, 8-agent hive learning step vs one PEFT LoRA step.

Both run the same tokens (8 rows of prompt + answer) on the embedded SmolLM2-135M with the
same answer-only loss; the PEFT baseline is one LoRA (r16, all 7 projections) on the bare
model with torch's AdamW. Steps alternate between the two so machine noise hits both.

    .venv/bin/python benchmarks/step_overhead.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from lorahive import Hive
from lorahive.base import load_base
from lorahive.config import DEFAULT_TARGETS
from lorahive.learning.batching import pack_examples
from lorahive.learning.objective import answer_nll

PROMPT = "Review: {} The service was {} and I would {} come back. Sentiment:"
WORDS = ["great", "slow", "friendly", "rude", "quick", "cold", "warm", "fine"]


def examples() -> list[tuple[str, str]]:
    rows = []
    for i, w in enumerate(WORDS):
        text = f"Visit number {i} to this place, with a long enough review to fill the row."
        rows.append((PROMPT.format(text, w, "surely" if i % 2 else "never"), " positive" if i % 2 else " negative"))
    return rows


def hive_step(hive: Hive, agents: list[str], rows: list[tuple[str, str]]) -> float:
    per_agent = {a: [r] for a, r in zip(agents, rows, strict=True)}
    t = time.perf_counter()
    hive.learn(per_agent, steps=1)
    return time.perf_counter() - t


def peft_step(model, opt, batch) -> float:
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    total, count = answer_nll(model, batch)
    (total.sum() / count.sum()).backward()
    opt.step()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_base(device="cpu")
    rows = examples()
    agents = [f"agent{i}" for i in range(len(rows))]
    hive = Hive(loaded.model, loaded.tokenizer)
    hive.add_agents(agents)
    base = AutoModelForCausalLM.from_pretrained(loaded.source, local_files_only=True, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=16, lora_alpha=16, target_modules=list(DEFAULT_TARGETS)))
    lora_model = peft_model.base_model.model
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    batch = pack_examples(loaded.tokenizer, rows, hive.core.max_length)
    tokens = int(batch.attention_mask.sum())
    print(f"batch: {len(rows)} rows, {tokens} tokens, threads={args.threads}", flush=True)
    hive_step(hive, agents, rows), peft_step(lora_model, opt, batch)  # warm-up
    h_times, p_times = [], []
    for i in range(args.repeats):
        h_times.append(hive_step(hive, agents, rows))
        p_times.append(peft_step(lora_model, opt, batch))
        print(f"repeat {i}: hive {h_times[-1]:.3f} s  peft {p_times[-1]:.3f} s", flush=True)
    h, p = statistics.median(h_times), statistics.median(p_times)
    ranks = "+".join(str(lv.rank) for lv in hive.levels)
    print(f"hive 5 levels (r {ranks}), 8 agents: {h:.3f} s/step")
    print(f"PEFT one LoRA r16, bare model:      {p:.3f} s/step")
    print(f"ratio hive / PEFT: {h / p:.2f}")


if __name__ == "__main__":
    main()
