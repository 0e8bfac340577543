"""Loader for the continual-learning benchmark format (O-LoRA / TreeLoRA "LLM-CL-Benchmark").

A task type is a folder ``{task}/`` holding ``train.json`` and ``test.json`` — lists of
``{"prompt": ..., "answer": ...}`` — and ``labels.json``, the closed label set. Every prompt
has the same three parts::

    What is the topic of the following paragraph? Choose one from the option.   <- head
    Option: World, Sports, Business, Science or Technology                       <- head
    Title: ...                                                                   <- body
    Text: ...                                                                    <- body
    Answer:                                                                      <- tail

Truncation to a token budget (:func:`truncate_prompt`) keeps the head (instruction and
options) and the tail (the ``Answer:`` cue) whole and cuts the body from its end, because
the head says what to do, the tail where to answer, and the start of a text carries most
of its topic. From a task type's data, :func:`sample_task` draws one :class:`Task` and
:func:`split_tasks` cuts disjoint tasks, one per agent.
"""

from __future__ import annotations

import json
import random
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lorahive.suites.task import Example, Task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "CLData",
    "load_cl",
    "load_cl_suite",
    "sample_task",
    "split_prompt",
    "split_tasks",
    "truncate_prompt",
]


@dataclass(frozen=True)
class CLData:
    """All examples of one task type, as loaded from disk."""

    task_type: str
    train: list[Example]
    test: list[Example]
    labels: tuple[str, ...]


def _read_examples(path: Path) -> list[Example]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of {{prompt, answer}} records")
    out: list[Example] = []
    for i, r in enumerate(records):
        if not (isinstance(r, dict) and isinstance(r.get("prompt"), str) and isinstance(r.get("answer"), str)):
            raise ValueError(f"{path}: record {i} is not {{'prompt': str, 'answer': str}}")
        out.append((r["prompt"], r["answer"]))
    return out


def load_cl(folder: str | Path, task_type: str | None = None) -> CLData:
    """Load one task type from ``folder`` (``train.json``, ``test.json``, ``labels.json``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"no task folder at {folder}")
    labels_path = folder / "labels.json"
    try:
        labels = tuple(json.loads(labels_path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {labels_path}: {e}") from e
    train, test = _read_examples(folder / "train.json"), _read_examples(folder / "test.json")
    return CLData(task_type or folder.name, train, test, labels)


def load_cl_suite(root: str | Path, task_types: Sequence[str] | None = None) -> dict[str, CLData]:
    """Load several task types from ``root/{task}/``; all sub-folders when none are named."""
    root = Path(root)
    names = list(task_types) if task_types else sorted(p.name for p in root.iterdir() if (p / "labels.json").is_file())
    return {name: load_cl(root / name) for name in names}


def split_prompt(prompt: str) -> tuple[str, str, str]:
    """Split a prompt into (head, body, tail), rejoined with newlines.

    head = the lines up to and including the ``Option:`` line (or the first line when there
    is none); tail = the last line when it ends with ``:`` (the answer cue); body = the rest.
    """
    lines = prompt.split("\n")
    tail = lines.pop() if len(lines) > 1 and lines[-1].rstrip().endswith(":") else ""
    opt = next((i for i, line in enumerate(lines) if line.startswith("Option:")), 0)
    head, body = lines[: opt + 1], lines[opt + 1 :]
    return "\n".join(head), "\n".join(body), tail


def _n_tokens(tok: PreTrainedTokenizerBase, text: str) -> int:
    return len(tok(text, add_special_tokens=True)["input_ids"])


def _decode(tok: PreTrainedTokenizerBase, ids: list[int]) -> str:
    return str(tok.decode(ids, skip_special_tokens=True)).rstrip()


def _join(head: str, body: str, tail: str) -> str:
    return "\n".join(part for part in (head, body, tail) if part)


def truncate_prompt(prompt: str, tokenizer: PreTrainedTokenizerBase, max_tokens: int, ellipsis: str = "...") -> str:
    """Shorten ``prompt`` to at most ``max_tokens`` tokens (special tokens counted).

    The body is cut from its end and marked with ``ellipsis``; head and tail stay whole.
    Raises ``ValueError`` when head and tail alone exceed the budget, since no cut then
    leaves a prompt that still says what to answer.
    """
    if _n_tokens(tokenizer, prompt) <= max_tokens:
        return prompt
    head, body, tail = split_prompt(prompt)
    if _n_tokens(tokenizer, _join(head, ellipsis, tail)) > max_tokens:
        raise ValueError(f"prompt head and tail alone exceed {max_tokens} tokens: {prompt[:80]!r}...")
    ids = list(tokenizer(body, add_special_tokens=False)["input_ids"])
    lo, hi = 0, len(ids)  # the longest body prefix that fits, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        cut = _decode(tokenizer, ids[:mid]) + ellipsis
        if _n_tokens(tokenizer, _join(head, cut, tail)) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    cut = _decode(tokenizer, ids[:lo]) + ellipsis
    return _join(head, cut, tail)


#: Cut prompts per tokenizer, ``(max_tokens, prompt) -> cut``: a stream draws the same examples
#: over and over, and a cut costs a dozen tokenizer calls (the bisection). Bounded per tokenizer.
_CUTS: weakref.WeakKeyDictionary[PreTrainedTokenizerBase, dict[tuple[int, str], str]] = weakref.WeakKeyDictionary()
_MAX_CUTS = 200_000


def _truncate_all(examples: list[Example], tokenizer: PreTrainedTokenizerBase | None, max_tokens: int | None) -> list[Example]:
    if tokenizer is None or max_tokens is None:
        return examples
    cuts = _CUTS.setdefault(tokenizer, {})
    out = []
    for p, a in examples:
        cut = cuts.get((max_tokens, p))
        if cut is None:
            cut = truncate_prompt(p, tokenizer, max_tokens)
            if len(cuts) >= _MAX_CUTS:
                cuts.clear()
            cuts[(max_tokens, p)] = cut
        out.append((cut, a))
    return out


def sample_task(
    data: CLData,
    n_support: int,
    n_query: int,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_tokens: int | None = None,
    balanced: bool = False,
) -> Task:
    """Draw one task: ``n_support`` train examples and ``n_query`` test examples, seeded.

    With ``balanced`` the support part cycles through the labels (in a seeded order), so a
    handful of examples does not teach a label prior that the task does not have; the query
    part is always a plain random draw, so scoring stays unbiased.
    """
    if n_support > len(data.train) or n_query > len(data.test):
        raise ValueError(
            f"{data.task_type}: asked for {n_support} support / {n_query} query examples, "
            f"have {len(data.train)} train / {len(data.test)} test"
        )
    rng = random.Random(seed)
    support = _balanced(data, n_support, rng) if balanced and data.labels else rng.sample(data.train, n_support)
    query = rng.sample(data.test, n_query)
    return Task(data.task_type, _truncate_all(support, tokenizer, max_tokens), _truncate_all(query, tokenizer, max_tokens), data.labels)


def _balanced(data: CLData, n: int, rng: random.Random) -> list[Example]:
    """``n`` train examples taken round-robin over the labels, each label's examples shuffled."""
    by_label: dict[str, list[Example]] = {}
    for ex in data.train:
        by_label.setdefault(ex[1], []).append(ex)
    pools = [rng.sample(v, len(v)) for _, v in sorted(by_label.items())]
    rng.shuffle(pools)
    out: list[Example] = []
    while len(out) < n:
        for pool in pools:
            if pool and len(out) < n:
                out.append(pool.pop())
    rng.shuffle(out)
    return out


def split_tasks(
    data: CLData,
    n_tasks: int,
    n_support: int,
    n_query: int,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_tokens: int | None = None,
) -> list[Task]:
    """Cut ``n_tasks`` tasks with pairwise-disjoint support and query sets (e.g. one per agent)."""
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    if n_tasks * n_support > len(data.train) or n_tasks * n_query > len(data.test):
        raise ValueError(
            f"{data.task_type}: {n_tasks} tasks of {n_support} support / {n_query} query examples need "
            f"{n_tasks * n_support} train / {n_tasks * n_query} test, have {len(data.train)} / {len(data.test)}"
        )
    rng = random.Random(seed)
    train = rng.sample(data.train, len(data.train))
    test = rng.sample(data.test, len(data.test))
    return [
        Task(
            data.task_type,
            _truncate_all(train[i * n_support : (i + 1) * n_support], tokenizer, max_tokens),
            _truncate_all(test[i * n_query : (i + 1) * n_query], tokenizer, max_tokens),
            data.labels,
        )
        for i in range(n_tasks)
    ]
