"""The demo slice shipped inside the package, and how it was cut.

``lorahive/data/demo/{task}/`` holds a few CL-benchmark task types in the same format as
``../shared/data/cl/`` (see :mod:`lorahive.suites.cl`), small and short enough that the
demo runs SmolLM2-135M on a 2-core CPU: every prompt is at most :data:`DEMO_MAX_TOKENS`
tokens of that model's tokenizer. The demo needs nothing outside the package.

:func:`build_demo_slice` is the exact procedure that produced the shipped files (recorded
in ``PROVENANCE.md``): per split, examples are taken round-robin over the label set, the
shortest prompts of each label first, and the few that are still too long are truncated.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from lorahive.config import DEMO_TASK_TYPES
from lorahive.suites.cl import CLData, load_cl, truncate_prompt
from lorahive.suites.task import Example

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "DEMO_MAX_TOKENS",
    "DEMO_TASK_TYPES",
    "build_demo_slice",
    "demo_dir",
    "load_demo",
    "load_demo_suite",
]

#: Token budget of every shipped prompt (SmolLM2 tokenizer, special tokens counted).
DEMO_MAX_TOKENS = 96


def demo_dir() -> Path:
    """The folder of the shipped slice inside the installed package."""
    return Path(str(resources.files("lorahive") / "data" / "demo"))


def load_demo(task_type: str) -> CLData:
    """Load one task type of the shipped slice."""
    if task_type not in DEMO_TASK_TYPES:
        raise ValueError(f"unknown demo task type {task_type!r}; available: {', '.join(DEMO_TASK_TYPES)}")
    return load_cl(demo_dir() / task_type)


def load_demo_suite(task_types: Sequence[str] | None = None) -> dict[str, CLData]:
    """Load several (default: all) task types of the shipped slice."""
    return {t: load_demo(t) for t in (task_types or DEMO_TASK_TYPES)}


def _pick(examples: list[Example], labels: Sequence[str], n: int, lengths: list[int]) -> list[int]:
    """Indices of ``n`` examples, round-robin over labels, shortest prompt first within each."""
    by_label = {label: sorted((i for i, (_, a) in enumerate(examples) if a == label), key=lambda i: (lengths[i], i)) for label in labels}
    picked: list[int] = []
    while len(picked) < n and any(by_label.values()):
        for label in labels:
            if by_label[label] and len(picked) < n:
                picked.append(by_label[label].pop(0))
    return picked


def _cut(examples: list[Example], labels: Sequence[str], n: int, tokenizer: PreTrainedTokenizerBase, max_tokens: int, seed: int) -> list[Example]:
    lengths = [len(tokenizer(p, add_special_tokens=True)["input_ids"]) for p, _ in examples]
    chosen = [examples[i] for i in _pick(examples, labels, n, lengths)]
    random.Random(seed).shuffle(chosen)
    return [(truncate_prompt(p, tokenizer, max_tokens), a) for p, a in chosen]


def _write(path: Path, examples: list[Example]) -> None:
    records = [{"prompt": p, "answer": a} for p, a in examples]
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def build_demo_slice(
    source: str | Path,
    out: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    task_types: Sequence[str] = DEMO_TASK_TYPES,
    n_train: int = 64,
    n_test: int = 32,
    max_tokens: int = DEMO_MAX_TOKENS,
    seed: int = 0,
) -> dict[str, CLData]:
    """Cut the demo slice from a CL-benchmark root (``../shared/data/cl/standard``) into ``out``."""
    out = Path(out)
    built: dict[str, CLData] = {}
    for t in task_types:
        data = load_cl(Path(source) / t)
        train = _cut(data.train, data.labels, n_train, tokenizer, max_tokens, seed)
        test = _cut(data.test, data.labels, n_test, tokenizer, max_tokens, seed + 1)
        folder = out / t
        folder.mkdir(parents=True, exist_ok=True)
        _write(folder / "train.json", train)
        _write(folder / "test.json", test)
        (folder / "labels.json").write_text(json.dumps(list(data.labels), ensure_ascii=False) + "\n", encoding="utf-8")
        built[t] = CLData(t, train, test, data.labels)
    return built
