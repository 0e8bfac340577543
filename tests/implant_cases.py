"""CounterFact-like edits for the implant tests, in words the tiny test tokenizer knows (tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_model, small_stack
from lorahive import Hive, StackSpec
from lorahive.config.implant import ImplantConfig
from lorahive.implant.edits import Edit

TEMPLATES = ["The capital of {} is", "The team of {} won the", "The sky over {} is"]
WORDS = ["Paris", "blue", "team", "match", "summit", "great", "terrible", "fine", "sky", "France", "positive", "neutral"]


def tiny_edits(n: int = 8) -> list[Edit]:
    """``n`` edits (distinct for n ≤ 36): "The capital of W is" → a new word instead of an old one; a paraphrase and a neighbour of its own."""
    out = []
    for i in range(n):
        w = WORDS[i % len(WORDS)]
        ask = TEMPLATES[(i // len(WORDS)) % len(TEMPLATES)]
        out.append(
            Edit(
                case_id=i,
                prompt=ask.format(w),
                subject=w,
                target_new=WORDS[(i + 1) % len(WORDS)],
                ground_truth=WORDS[(i + 2) % len(WORDS)],
                rephrase_prompt=f"Question: what is the capital of {w}? Answer:",
                locality_prompt=f"Sports: the {WORDS[(i + 3) % len(WORDS)]} won the",
                locality_ground_truth=WORDS[(i + 4) % len(WORDS)],
            )
        )
    return out


def write_records(path: Path, edits: list[Edit]) -> Path:
    """``edits`` as a CounterFact JSON file."""
    path.write_text(json.dumps([e.__dict__ for e in edits]))
    return path


def two_agent_hive(tokenizer, stack: StackSpec | None = None) -> Hive:
    """A tiny random hive (conftest's model, ``stack`` or the small five-level stack) with agents ann and bob."""
    h = Hive(make_model(len(tokenizer)), tokenizer, stack or small_stack(), seed=0)
    h.add_agents(["ann", "bob"])
    return h


def small_implant_cfg(**over) -> ImplantConfig:
    """The implant tests' config on the tiny model: 8 edits into a 2-block band, checkpoints after 1, 4 and 8."""
    fields = {"base": "tiny", "edits": 8, "band": (0, 1), "checkpoints": (1, 4, 8), "steps": 24, "check_every": 4, "lr": 1e-2, "contexts": 1, "margin": 1.0}
    return ImplantConfig(**(fields | over))
