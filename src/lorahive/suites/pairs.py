"""Preference pairs (prompt, chosen, rejected) from the CL tasks and from knowledge edits.

* **CL tasks** (:mod:`lorahive.suites.cl`; the shipped demo slice or a benchmark folder):
  chosen = the correct label, rejected = one wrong label of the task's label set, drawn
  uniformly with the run's seed. Training pairs come from ``train.json``, held-out pairs
  from ``test.json``; the labels are kept so accuracy over the whole label set can be read.
* **Knowledge edits** (CounterFact, ``../shared/data/knowledge/counterfact-edit-1k.json``):
  chosen = ``target_new``, rejected = the old ``ground_truth`` — the new fact preferred over
  the one the model knows. Training pairs ask ``prompt``; held-out pairs ask the same edits
  through ``rephrase_prompt`` (does the preference generalise beyond the wording learned).

Answers carry one leading space, as a model writes them after a prompt.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lorahive.config.stages import PairsSpec
from lorahive.suites.cl import CLData, load_cl, truncate_prompt
from lorahive.suites.demo import load_demo
from lorahive.suites.task import Example

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["Pair", "PairSet", "cl_pairs", "knowledge_pairs", "load_pairs"]


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class PairSet:
    """Training and held-out pairs of one data set; ``labels`` (with a leading space) for label tasks."""

    train: list[Pair]
    eval: list[Pair]
    labels: tuple[str, ...] | None = None


def _spaced(answer: str) -> str:
    return answer if answer.startswith(" ") else " " + answer


def _label_pairs(examples: list[Example], labels: tuple[str, ...], n: int, rng: random.Random, tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> list[Pair]:
    picked = rng.sample(examples, min(n, len(examples)))
    out = []
    for prompt, answer in picked:
        wrong = rng.choice([lb for lb in labels if lb != answer])
        out.append(Pair(truncate_prompt(prompt, tokenizer, max_tokens), _spaced(answer), _spaced(wrong)))
    return out


def cl_pairs(data: CLData, n_train: int, n_eval: int, seed: int, tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> PairSet:
    """Correct label over a wrong one, from a task type's train and test splits."""
    if len(data.labels) < 2:
        raise ValueError(f"{data.task_type}: a preference pair needs at least two labels, got {list(data.labels)}")
    rng = random.Random(f"{seed}/pairs/{data.task_type}")
    train = _label_pairs(data.train, data.labels, n_train, rng, tokenizer, max_tokens)
    held = _label_pairs(data.test, data.labels, n_eval, rng, tokenizer, max_tokens)
    return PairSet(train, held, tuple(_spaced(lb) for lb in data.labels))


def _edits(path: Path) -> list[dict[str, str]]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    keys = ("prompt", "target_new", "ground_truth", "rephrase_prompt")
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of CounterFact records")
    for i, r in enumerate(records):
        if not (isinstance(r, dict) and all(isinstance(r.get(k), str) and r[k] for k in keys)):
            raise ValueError(f"{path}: record {i} lacks one of {list(keys)} as a non-empty string")
    return records


def knowledge_pairs(path: str | Path, n_train: int, n_eval: int, seed: int) -> PairSet:
    """New target over the old one; held out: the paraphrased prompts of the first ``n_eval`` trained edits."""
    records = _edits(Path(path))
    picked = random.Random(f"{seed}/pairs/knowledge").sample(records, min(n_train, len(records)))
    train = [Pair(r["prompt"], _spaced(r["target_new"]), _spaced(r["ground_truth"])) for r in picked]
    held = [Pair(r["rephrase_prompt"], _spaced(r["target_new"]), _spaced(r["ground_truth"])) for r in picked[:n_eval]]
    return PairSet(train, held)


def load_pairs(spec: PairsSpec, seed: int, tokenizer: PreTrainedTokenizerBase) -> PairSet:
    """The pairs a data set of a stages config names."""
    if spec.source == "knowledge":
        assert spec.path is not None
        return knowledge_pairs(spec.path, spec.train, spec.eval, seed)
    assert spec.task_type is not None
    data = load_demo(spec.task_type) if spec.root is None else load_cl(Path(spec.root) / spec.task_type)
    return cl_pairs(data, spec.train, spec.eval, seed, tokenizer, spec.max_prompt_tokens)
