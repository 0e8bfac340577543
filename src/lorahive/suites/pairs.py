"""Preference pairs (prompt, chosen, rejected) from the CL tasks and from knowledge edits.

* **CL tasks** (:mod:`lorahive.suites.cl`; the shipped demo slice or a benchmark folder):
  chosen = the correct label, rejected = one wrong label of the task's label set, drawn
  uniformly with the run's seed. Training pairs come from ``train.json``, held-out pairs
  from ``test.json``; the labels are kept so accuracy over the whole label set can be read.
* **Knowledge edits** (``../shared/data/knowledge/``): the new target preferred over the old
  one the model knows. CounterFact (``counterfact-edit-1k.json``): chosen = ``target_new``,
  rejected = ``ground_truth``, asked by ``prompt``; zsRE (``zsre_mend_train-1k.json``): chosen =
  ``alt``, rejected = the first of ``answers``, asked by the question ``src``. The format is
  read from the records' keys; records whose new or old answer is empty, or which are the
  same, give no pair and are skipped (19 of zsRE's 1,000, none of CounterFact's). Held-out pairs ask the same edits through their paraphrase
  (``rephrase_prompt`` / ``rephrase``): does the preference go beyond the wording learned.

Asking for more pairs than a data set holds is refused (:class:`PairsError`, naming the field).

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

__all__ = ["KNOWLEDGE_FORMATS", "Pair", "PairSet", "PairsError", "cl_pairs", "knowledge_pairs", "load_pairs", "read_records"]


class PairsError(ValueError):
    """A data set that cannot give the pairs asked for; ``field`` is the :class:`PairsSpec` field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


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
        raise PairsError("task_type", f"{data.task_type}: a preference pair needs at least two labels, got {list(data.labels)}")
    if n_train > len(data.train):
        raise PairsError("train", f"{n_train} pairs asked; {data.task_type} has {len(data.train)} training examples")
    if n_eval > len(data.test):
        raise PairsError("eval", f"{n_eval} pairs asked; {data.task_type} has {len(data.test)} test examples")
    rng = random.Random(f"{seed}/pairs/{data.task_type}")
    try:
        train = _label_pairs(data.train, data.labels, n_train, rng, tokenizer, max_tokens)
        held = _label_pairs(data.test, data.labels, n_eval, rng, tokenizer, max_tokens)
    except ValueError as e:  # a prompt whose instruction alone does not fit
        raise PairsError("max_prompt_tokens", str(e)) from None
    return PairSet(train, held, tuple(_spaced(lb) for lb in data.labels))


#: The knowledge-edit record shapes read: format -> (prompt, new answer, old answer, paraphrase) keys.
KNOWLEDGE_FORMATS = {
    "counterfact": ("prompt", "target_new", "ground_truth", "rephrase_prompt"),
    "zsre": ("src", "alt", "answers", "rephrase"),
}


def _edit(record: object, fmt: str) -> tuple[str, str, str, str] | None:
    """(prompt, new, old, paraphrase) of one record of ``fmt``; None when it lacks a key or holds a non-string."""
    if not isinstance(record, dict):
        return None
    values = [record.get(k) for k in KNOWLEDGE_FORMATS[fmt]]
    if fmt == "zsre" and isinstance(values[2], list) and values[2]:
        values[2] = values[2][0]  # the first of the true answers
    if not all(isinstance(v, str) for v in values) or not all(str(v).strip() for v in (values[0], values[3])):
        return None
    prompt, new, old, para = (str(v) for v in values)
    return prompt, new, old, para


def read_records(path: Path, field: str, what: str) -> list:
    """The non-empty JSON list in ``path``; :class:`PairsError` on ``field`` if it cannot be read or is not one."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PairsError(field, f"cannot read {path}: {e}") from None
    if not isinstance(records, list) or not records:
        raise PairsError(field, f"{path}: expected a non-empty JSON list of {what}")
    return records


def _edits(path: Path) -> list[tuple[str, str, str, str]]:
    """The edits of a CounterFact or zsRE file as (prompt, new, old, paraphrase); the format is read from the first record.

    An edit whose new or old answer is empty, or which are the same, gives no pair and is skipped.
    """
    records = read_records(path, "path", "CounterFact or zsRE records")
    first = records[0] if isinstance(records[0], dict) else {}
    fmt = next((f for f, keys in KNOWLEDGE_FORMATS.items() if keys[1] in first), None)
    if fmt is None:
        shapes = "; ".join(f"{f}: {', '.join(keys)}" for f, keys in KNOWLEDGE_FORMATS.items())
        raise PairsError("path", f"{path}: record 0 is neither format ({shapes})")
    out = []
    for i, r in enumerate(records):
        edit = _edit(r, fmt)
        if edit is None:
            raise PairsError("path", f"{path}: record {i} lacks one of {list(KNOWLEDGE_FORMATS[fmt])} ({fmt}) as text (prompt and paraphrase non-empty)")
        new, old = edit[1].strip(), edit[2].strip()
        if new and old and new != old:  # a pair needs two different answers
            out.append(edit)
    return out


def knowledge_pairs(path: str | Path, n_train: int, n_eval: int, seed: int) -> PairSet:
    """New target over the old one; held out: the paraphrased prompts of the first ``n_eval`` trained edits."""
    edits = _edits(Path(path))
    if n_train > len(edits):
        raise PairsError("train", f"{n_train} pairs asked; {path} holds {len(edits)} usable edits")
    if n_eval > n_train:
        raise PairsError("eval", f"{n_eval} > train {n_train}; held-out pairs are the paraphrases of trained edits")
    picked = random.Random(f"{seed}/pairs/knowledge").sample(edits, n_train)
    train = [Pair(prompt, _spaced(new), _spaced(old)) for prompt, new, old, _ in picked]
    held = [Pair(para, _spaced(new), _spaced(old)) for _, new, old, para in picked[:n_eval]]
    return PairSet(train, held)


def load_pairs(spec: PairsSpec, seed: int, tokenizer: PreTrainedTokenizerBase) -> PairSet:
    """The pairs a data set of a stages config names."""
    if spec.source == "knowledge":
        assert spec.path is not None
        return knowledge_pairs(spec.path, spec.train, spec.eval, seed)
    assert spec.task_type is not None
    try:
        data = load_demo(spec.task_type) if spec.root is None else load_cl(Path(spec.root) / spec.task_type)
    except (ValueError, OSError) as e:
        raise PairsError("task_type" if spec.root is None else "root", str(e)) from None
    return cl_pairs(data, spec.train, spec.eval, seed, tokenizer, spec.max_prompt_tokens)
