"""Micro-variants of one prompt and its target: small, controlled token-level differences (seed note 001).

Note 001 asks to change a model inside its own vocabulary, a token or two at a time: the same
text shown in 50+ versions that differ by a marker, a synonym the model itself expects, a
different clause order, or a target continuation that grows one or two tokens per version.
:func:`make_variants` builds them, deterministically from a seed. Kinds:

* ``growth`` — the prompt unchanged; the answer is the first 1, 1 + g, 1 + 2g, … tokens of the
  target (g = ``growth``, 1 or 2), up to the whole target. Its ``answer_ids`` are prefixes of
  the target's tokens.
* ``marker`` — a short marker phrase ("Fact:", "Note that", …) inserted before one word.
* ``synonym`` — one or two words replaced by a token among the base model's own top-k
  next-token predictions at that position (a word-like token: a leading space, letters only).
* ``reorder`` — the prompt's clauses (split at commas, " that ", " of ") permuted, the last
  clause kept last because the answer continues it. Needs three clauses or more.

A kind that does not apply to a prompt (no clauses to reorder, no word-like prediction) is
skipped and the others fill its share. Every variant's ids are what the base tokenizer makes
of its text, so it lies in the base vocabulary by construction; ``distance`` is the token
edit distance of its prompt to the original prompt (growth variants differ in the answer
only: distance 0, and ``len(answer_ids)`` says how far they grew).
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorahive.adapters import Routing
from lorahive.learning.batching import encode_answer, encode_prompt
from lorahive.runtime.hive import Hive

__all__ = ["DEFAULT_MARKERS", "KINDS", "Variant", "VariantSpec", "edit_distance", "make_variants"]

KINDS: tuple[str, ...] = ("growth", "marker", "synonym", "reorder")
DEFAULT_MARKERS: tuple[str, ...] = (
    "Fact:", "Note that", "Remember:", "Key point:", "In short,", "Indeed,",
    "Recall that", "Notably,", "True:", "Known:", "Note:", "Important:",
)  # fmt: skip
_CLAUSE = re.compile(r"(,\s*|\s+that\s+|\s+of\s+)")
_MAX_PERMUTATIONS = 120


class VariantSpec(BaseModel):
    """What to vary and how much; a bad value fails with the field's name and what is allowed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1, description="the text the target continues")
    target: str = Field(min_length=1, description="the continuation to learn (e.g. ' Paris')")
    n: int = Field(default=50, strict=True, ge=1, le=10_000, description="how many variants")
    seed: int = Field(default=0, strict=True, description="same seed, same variants")
    top_k: int = Field(default=8, strict=True, ge=1, le=256, description="synonym candidates: the model's top-k predictions")
    growth: int = Field(default=1, strict=True, ge=1, le=2, description="target tokens added per growth variant: 1 or 2")
    markers: tuple[str, ...] = Field(default=DEFAULT_MARKERS, min_length=1, description="marker phrases to insert")

    @field_validator("prompt", "target")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("must contain a non-space character")
        return text

    @field_validator("markers")
    @classmethod
    def _markers(cls, markers: tuple[str, ...]) -> tuple[str, ...]:
        if any(not m.strip() for m in markers):
            raise ValueError("every marker must contain a non-space character")
        return markers


@dataclass(frozen=True)
class Variant:
    """One micro-variant: its kind, text, token ids, distance to the original, and the answer to learn."""

    kind: str
    prompt: str
    answer: str
    prompt_ids: tuple[int, ...]  # encode_prompt(prompt): what the hive sees
    answer_ids: tuple[int, ...]  # the answer's tokens, without EOS
    distance: int  # token edit distance of prompt_ids to the original prompt's ids
    detail: str  # what changed, in words

    @property
    def example(self) -> tuple[str, str]:
        """The ``(prompt, answer)`` pair :meth:`Hive.learn` takes."""
        return self.prompt, self.answer


def edit_distance(a: tuple[int, ...] | list[int], b: tuple[int, ...] | list[int]) -> int:
    """Levenshtein distance between two token sequences (insert, delete, substitute: 1 each)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def make_variants(
    model: Hive | PreTrainedModel, prompt: str, target: str, n: int = 50, seed: int = 0, *,
    tokenizer: PreTrainedTokenizerBase | None = None, top_k: int = 8, growth: int = 1, markers: tuple[str, ...] = DEFAULT_MARKERS,
) -> list[Variant]:  # fmt: skip
    """``n`` distinct micro-variants of ``prompt`` → ``target``, every applicable kind present.

    ``model`` is a :class:`Hive` (its base model runs with every level off) or a plain causal
    LM with its ``tokenizer``; it supplies the synonym candidates. Kinds are taken in turn
    (growth, marker, synonym, reorder), each from its own seeded shuffle, so the mix is even
    and the same seed gives the same list. Returned sorted by kind, then distance.
    """
    spec = VariantSpec(prompt=prompt, target=target, n=n, seed=seed, top_k=top_k, growth=growth, markers=tuple(markers))
    tok = model.tokenizer if isinstance(model, Hive) else tokenizer
    if tok is None:
        raise ValueError("tokenizer: needed with a plain model (a Hive brings its own)")
    original = tuple(encode_prompt(tok, spec.prompt))
    target_ids = tuple(encode_answer(tok, spec.target, eos=False))
    if not original:
        raise ValueError(f"prompt: {spec.prompt!r} tokenizes to nothing")
    if not target_ids:
        raise ValueError(f"target: {spec.target!r} tokenizes to nothing")
    build = _Builder(tok, spec, original, target_ids)
    pools = {
        "growth": build.growth(),
        "marker": build.markers(),
        "synonym": build.synonyms(_top_k(model, tok, original, spec.top_k)),
        "reorder": build.reorders(),
    }
    for kind in KINDS[1:]:
        random.Random(f"{spec.seed}/{kind}").shuffle(pools[kind])
    chosen = _round_robin(pools, spec.n)
    return sorted(chosen, key=lambda v: (KINDS.index(v.kind), v.distance, len(v.answer_ids), v.prompt))


def _round_robin(pools: dict[str, list[Variant]], n: int) -> list[Variant]:
    """Take one variant of each kind in turn until ``n``; duplicates (same ids) are skipped."""
    seen: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
    chosen: list[Variant] = []
    queues = {k: list(reversed(v)) for k, v in pools.items()}
    while len(chosen) < n and any(queues.values()):
        for kind in KINDS:
            while queues[kind] and len(chosen) < n:
                v = queues[kind].pop()
                if (v.prompt_ids, v.answer_ids) not in seen:
                    seen.add((v.prompt_ids, v.answer_ids))
                    chosen.append(v)
                    break
    if len(chosen) < n:
        sizes = ", ".join(f"{k} {len(p)}" for k, p in pools.items())
        raise ValueError(f"n: this prompt has only {len(chosen)} distinct variants ({sizes}); ask for at most {len(chosen)}")
    return chosen


@torch.no_grad()
def _top_k(model: Hive | PreTrainedModel, tok: PreTrainedTokenizerBase, ids: tuple[int, ...], k: int) -> torch.Tensor:
    """The base model's top-``k`` next-token ids (T, k) after every prefix of ``ids``, in one forward."""
    lm = model.model if isinstance(model, Hive) else model
    device = next(lm.parameters()).device
    x = torch.tensor([ids], device=device)
    if isinstance(model, Hive):
        with model.core.routing.use(Routing(active=frozenset())):  # every level off: the base's own predictions
            logits = lm(input_ids=x).logits[0]
    else:
        logits = lm(input_ids=x).logits[0]  # (T, V)
    logits = logits[:, : len(tok)]  # ids past the tokenizer's vocabulary are never proposed
    return logits.topk(min(k * 4, logits.shape[-1]), dim=-1).indices.cpu()  # room for the filter


class _Builder:
    """Candidate variants of each kind for one prompt (deterministic, before any shuffle)."""

    def __init__(self, tok: PreTrainedTokenizerBase, spec: VariantSpec, original: tuple[int, ...], target_ids: tuple[int, ...]) -> None:
        self.tok, self.spec, self.original, self.target_ids = tok, spec, original, target_ids
        self.plain = list(tok(spec.prompt, add_special_tokens=False)["input_ids"])
        self.offset = len(original) - len(self.plain)  # special tokens the tokenizer puts in front
        self.special = set(tok.all_special_ids)

    def _decode(self, ids: list[int]) -> str:
        return str(self.tok.decode(ids))

    def _variant(self, kind: str, text: str, detail: str) -> Variant | None:
        ids = tuple(encode_prompt(self.tok, text))
        if ids == self.original or not ids:
            return None
        return Variant(kind, text, self.spec.target, ids, self.target_ids, edit_distance(ids, self.original), detail)

    def growth(self) -> list[Variant]:
        """The whole target first (so a short share still holds it), then its prefixes, shortest first."""
        m, g = len(self.target_ids), self.spec.growth
        out = []
        for k in [m, *range(1, m, g)]:
            ids = self.target_ids[:k]
            text = self._decode(list(ids))
            if tuple(encode_answer(self.tok, text, eos=False)) == ids:  # only prefixes whose text the hive reads back as these ids
                out.append(Variant("growth", self.spec.prompt, text, self.original, ids, 0, f"first {k} of {m} target tokens"))
        return out

    def markers(self) -> list[Variant]:
        """Each marker before each word of the prompt."""
        text = self.spec.prompt
        starts = [m.start() for m in re.finditer(r"\S+", text)]
        out = []
        for marker, (w, at) in itertools.product(self.spec.markers, enumerate(starts)):
            v = self._variant("marker", f"{text[:at]}{marker} {text[at:]}", f"{marker!r} before word {w}")
            if v is not None:
                out.append(v)
        return out

    def _words(self) -> list[tuple[int, int, str]]:
        """Word spans ``(start, stop, text)`` in the prompt's plain ids: a token with a leading space (or the first) and its letter-only continuations."""
        pieces = [self._decode([i]) for i in self.plain]
        spans: list[tuple[int, int, str]] = []
        for j, piece in enumerate(pieces):
            if (j == 0 or piece.startswith(" ")) and piece.strip().isalpha():
                spans.append((j, j + 1, piece))
            elif spans and spans[-1][1] == j and piece.isalpha():
                s, _, w = spans[-1]
                spans[-1] = (s, j + 1, w + piece)
        return spans

    def synonyms(self, top: torch.Tensor) -> list[Variant]:
        """Single swaps (every word, every accepted candidate), then double swaps with each word's first candidate."""
        options: list[tuple[int, int, str, list[int]]] = []
        for start, stop, word in self._words():
            at = self.offset + start - 1  # the position predicting the word's first token
            if at < 0:
                continue
            cands = [c for c in top[at].tolist() if self._word_like(c, word)][: self.spec.top_k]
            if cands:
                options.append((start, stop, word, cands))
        out = []
        for start, stop, word, cands in options:
            for c in cands:
                v = self._swap([(start, stop, c)], f"{word.strip()!r} -> {self._decode([c]).strip()!r}")
                if v is not None:
                    out.append(v)
        for (s1, e1, w1, c1), (s2, e2, w2, c2) in itertools.combinations(options, 2):
            v = self._swap([(s1, e1, c1[0]), (s2, e2, c2[0])], f"{w1.strip()!r}, {w2.strip()!r} swapped")
            if v is not None:
                out.append(v)
        return out

    def _word_like(self, c: int, word: str) -> bool:
        piece = self._decode([c])
        return c not in self.special and piece.startswith(" ") and piece.strip().isalpha() and piece.strip().lower() != word.strip().lower()

    def _swap(self, swaps: list[tuple[int, int, int]], detail: str) -> Variant | None:
        ids = list(self.plain)
        for start, stop, c in sorted(swaps, reverse=True):  # right to left: earlier spans keep their indices
            ids[start:stop] = [c]
        return self._variant("synonym", self._decode(ids), detail)

    def reorders(self) -> list[Variant]:
        """Permutations of every clause but the last (which the answer continues); needs three clauses."""
        parts = _CLAUSE.split(self.spec.prompt)
        clauses, seps = parts[0::2], parts[1::2]
        if len(clauses) < 3 or any(not c.strip() for c in clauses):
            return []
        out = []
        head = clauses[:-1]
        for perm in itertools.islice(itertools.permutations(range(len(head))), 1, _MAX_PERMUTATIONS + 1):  # 1: skip the identity
            order = [head[i] for i in perm] + [clauses[-1]]
            text = "".join(c + s for c, s in zip(order, [*seps, ""], strict=True))
            v = self._variant("reorder", text, f"clauses in order {list(perm)} + last")
            if v is not None:
                out.append(v)
        return out
