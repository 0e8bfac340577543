"""Helpers for tests that need a run directory: a tiny base model saved to disk, a tiny config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from conftest import make_model, make_tokenizer
from lorahive.config import RunConfig, parse_config

LEVELS = [
    {"name": "swarm", "rank": 2, "alpha": 4, "scope": "shared", "inertia": 0.5, "lr": 1e-2},
    {"name": "agent", "rank": 2, "alpha": 4, "scope": "agent", "inertia": 0.5, "lr": 2e-2},
    {"name": "context", "rank": 2, "alpha": 4, "scope": "task", "inertia": 0.1, "lr": 2e-2},
]


def save_base(path: Path) -> Path:
    """Save the tiny random Llama and its tokenizer as a local Hugging Face model directory."""
    tok = make_tokenizer()
    model = make_model(len(tok))
    model.config.max_position_embeddings = 512
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def config_tree(base_dir: Path, **extra: Any) -> dict[str, Any]:
    """A 3-agent, 2-tick run on the demo tasks over the tiny base, as a plain config tree."""
    tree: dict[str, Any] = {
        "base": str(base_dir),
        "levels": LEVELS,
        "agents": 3,
        "ticks": 2,
        "threads": 1,
        "suite": {"task_types": ["agnews", "yelp"], "support": 2, "query": 2, "eval_query": 2, "max_prompt_tokens": 300, "eval_all_types": True},
        "agent": {"fast_steps": 1, "quality_bar": 0.0},
        "aggregation": {"strategy": "mean"},
    }
    return tree | extra


def tiny_config(base_dir: Path, overrides: list[str] | None = None, **extra: Any) -> RunConfig:
    return parse_config(config_tree(base_dir, **extra), overrides or [])


def two_stage_stream(base_dir: Path, overrides: list[str]) -> RunConfig:
    """Two agents on a yelp → agnews stream of two ticks per stage, four support examples each, no side measurements."""
    return tiny_config(
        base_dir,
        overrides,
        agents=2,
        ticks=4,
        suite={"support": 4, "query": 2, "eval_query": 2, "max_prompt_tokens": 300},
        stream={"order": ["yelp", "agnews"], "ticks_per_stage": 2},
        observe={"influence_examples": 0, "retention_tokens": 0},
    )


def checkpoint_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a run's checkpoint, keyed ``file:name``, to compare two runs exactly."""
    ckpt = run_dir / "checkpoint"
    return {f"{f.relative_to(ckpt)}:{k}": v for f in sorted(ckpt.rglob("*.safetensors")) for k, v in load_file(str(f)).items()}


def assert_same_checkpoints(a_dir: Path, b_dir: Path) -> None:
    """Two runs' checkpoints hold the same tensors bit for bit (but the torch RNG state, which a resume re-seeds)."""
    a, b = checkpoint_tensors(a_dir), checkpoint_tensors(b_dir)
    assert a.keys() == b.keys()
    for k in a:
        if not k.endswith("rng/torch"):
            assert torch.equal(a[k], b[k]), k
