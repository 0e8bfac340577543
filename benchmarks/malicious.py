"""Malicious agents vs. aggregation: honest agents' accuracy after N ticks, mean vs robust.

The swarm level is the only thing that can make the model right here. The base is a tiny
random Llama (2 layers, width 64) that knows nothing; the task is synthetic — an item word
decides which of four labels is right ("Item: red grape old" → "east"), eight item words,
two per label, two filler words around them — and accuracy is measured on held-out prompts with
the swarm level alone active (the only level in the stack), by label likelihood. Every
agent's honest proposal is its exact gradient on its own 8 support examples; the swarm
level moves only by aggregated proposals (agents take no fast steps), so what attackers do
to aggregation is what the accuracy shows. "after" is the mean held-out accuracy (256
prompts) over the last ``--average-last`` ticks, which smooths tick-to-tick jitter.

For each attacker fraction (0 % = clean, then 10 %, 25 %, 40 % of the agents, chosen from
the seed), two aggregation settings run over the same seed and schedule:

    mean     plain mean of the proposals (FedAvg), no clipping, no validation bound
    robust   validation (reject NaN/inf and norms > 3 × the tick's median norm),
             clipping to max_norm × reputation, coordinate-wise median
    robust-tm  the same with a 30 % trimmed mean instead of the median (``--settings``)

Usage (prints a table as it goes; one run per cell; one torch thread, as threads thrash on
a shared 2-core machine)::

    .venv/bin/python benchmarks/malicious.py [--kind sign_flip] [--scale 10] [--ticks 120] [--agents 20]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lorahive import Hive
from lorahive.config import parse_config
from lorahive.mechanisms.attack import Attack
from lorahive.observe.ledger import Ledger
from lorahive.runtime import run as runs
from lorahive.runtime.agent import score
from lorahive.runtime.swarm import Swarm
from lorahive.suites.task import Task

LABELS = ["north", "south", "east", "west"]
ITEMS = ["apple", "brick", "cloud", "drum", "eagle", "flint", "grape", "harp"]  # item i → LABELS[i % 4]
FILLER = ["red", "big", "old", "new", "soft", "hot", "cold", "slow", "dark", "wet"]
HEAD = "Option: north, south, east or west"

SETTINGS: dict[str, dict[str, Any]] = {
    "mean": {"strategy": "mean", "resonance": False},
    "robust": {"strategy": "median", "resonance": False, "reject_norm_ratio": 3.0, "max_norm": 1.0, "clip_by_reputation": True},
    "robust-tm": {"strategy": "trimmed_mean", "trim": 0.3, "resonance": False, "reject_norm_ratio": 3.0, "max_norm": 1.0, "clip_by_reputation": True},
}


def example(rng: random.Random) -> dict[str, str]:
    i = rng.randrange(len(ITEMS))
    words = [rng.choice(FILLER), ITEMS[i], rng.choice(FILLER)]
    rng.shuffle(words)
    return {"prompt": f"{HEAD}\nItem: {' '.join(words)}\nAnswer:", "answer": LABELS[i % 4]}


def write_task(root: Path, n_train: int = 512, n_test: int = 256, seed: int = 0) -> Path:
    """The synthetic task type ``items`` in the CL-benchmark folder format."""
    rng = random.Random(seed)
    folder = root / "items"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.json").write_text(json.dumps([example(rng) for _ in range(n_train)]), encoding="utf-8")
    (folder / "test.json").write_text(json.dumps([example(rng) for _ in range(n_test)]), encoding="utf-8")
    (folder / "labels.json").write_text(json.dumps(LABELS), encoding="utf-8")
    return root


def save_base(path: Path, seed: int = 0) -> Path:
    """A tiny random Llama and a tokenizer where every task word is one token."""
    corpus = [HEAD, "Item: Answer:", *[f" {w}" for w in LABELS + ITEMS + FILLER]] * 8
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.3, pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def config(base: Path, root: Path, setting: str, fraction: float, kind: str, scale: float, ticks: int, agents: int, seed: int) -> Any:
    tree = {
        "base": str(base),
        "seed": seed,
        "levels": [{"name": "swarm", "rank": 4, "alpha": 8, "scope": "shared", "inertia": 0.0, "lr": 0.01}],
        "agents": agents,
        "ticks": ticks,
        "suite": {"source": "cl", "root": str(root), "task_types": ["items"], "support": 8, "query": 2, "max_prompt_tokens": 64},
        "agent": {"fast_steps": 0, "fast_levels": [], "context_level": None, "quality_bar": 0.0},
        "aggregation": SETTINGS[setting],
        "attack": {"fraction": fraction, "kind": kind, "scale": scale},
    }
    return parse_config(tree)


def accuracy(swarm: Swarm, task: Task, agent: str) -> float:
    """Held-out accuracy of ``agent`` with the swarm level alone (shared: every agent sees it)."""
    return score(swarm.hive, {agent: task}, levels=[swarm.cfg.swarm_level])[agent]


def run_cell(work: Path, base: Path, root: Path, setting: str, fraction: float, args: argparse.Namespace) -> dict[str, Any]:
    """One run of ``args.ticks`` ticks; the honest agents' accuracy before and after."""
    cfg = config(base, root, setting, fraction, args.kind, args.scale, args.ticks, args.agents, args.seed)
    t = time.time()
    torch.set_num_threads(args.threads)
    hive = Hive.load(cfg.base, cfg.stack(), device="cpu", seed=cfg.seed)
    data = runs.load_data(cfg)
    swarm = Swarm(hive, cfg, data, Ledger(work / f"{setting}-{fraction:g}.sqlite"))
    attackers = next((m.attackers for m in swarm.mechanisms if isinstance(m, Attack)), [])  # built from cfg.attack
    honest = next(n for n in swarm.agents if n not in attackers)
    test = data["items"]
    task = Task("items", test.train[:1], test.test, test.labels)
    before = accuracy(swarm, task, honest)
    last: list[float] = []
    for _ in range(cfg.ticks):
        swarm.tick()
        if swarm.tick_no > cfg.ticks - args.average_last:
            last.append(accuracy(swarm, task, honest))
    after = sum(last) / len(last)
    swarm.ledger.close()
    rep = {n: a.reputation for n, a in swarm.agents.items()}
    return {"setting": setting, "fraction": fraction, "attackers": len(attackers), "before": before, "after": after,
            "accepted": swarm.accepted, "rejected": swarm.rejected, "rep_honest": _mean([r for n, r in rep.items() if n not in attackers]),
            "rep_attackers": _mean([rep[n] for n in attackers]), "seconds": time.time() - t}


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", default="sign_flip", choices=["sign_flip", "noise", "nan", "inf", "backdoor"])
    p.add_argument("--scale", type=float, default=10.0)
    p.add_argument("--ticks", type=int, default=120)
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fractions", default="0,0.1,0.25,0.4")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--average-last", type=int, default=10, help="'after' is the mean accuracy over the last this many ticks")
    p.add_argument("--settings", default="mean,robust", help=f"comma-separated, of {', '.join(SETTINGS)}")
    args = p.parse_args(argv)
    fractions = [float(f) for f in args.fractions.split(",")]
    t0 = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base, root = save_base(work / "base", args.seed), write_task(work / "tasks", seed=args.seed)
        print(f"attack {args.kind} ×{args.scale:g}, {args.agents} agents, {args.ticks} ticks; honest agents' held-out accuracy with the swarm level only ('after': mean over the last {args.average_last} ticks)")
        print(f"{'attackers':>10} | {'setting':>9} | {'before':>6} | {'after':>6} | {'accepted':>8} | {'rejected':>8} | {'rep honest':>10} | {'rep attackers':>13} | {'s':>4}")
        for fraction in fractions:
            for setting in args.settings.split(","):
                r = run_cell(work, base, root, setting, fraction, args)
                rows.append(r)
                who = f"{fraction:.0%} ({r['attackers']})"
                print(f"{who:>10} | {setting:>9} | {r['before']:6.1%} | {r['after']:6.1%} | {r['accepted']:8d} | {r['rejected']:8d} | {r['rep_honest']:10.2f} | {r['rep_attackers']:13.2f} | {r['seconds']:4.0f}", flush=True)
    print(f"wall time {time.time() - t0:.0f} s")
    return rows


if __name__ == "__main__":
    main()
