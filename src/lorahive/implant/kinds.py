"""The candidates of each variant kind for one prompt, before any shuffle (the kinds are described in variants.py)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import torch
from transformers import PreTrainedTokenizerBase

from lorahive.implant.spec import Variant, VariantSpec, edit_distance
from lorahive.learning.batching import encode_answer, encode_prompt

__all__ = ["VariantBuilder"]

_CLAUSE = re.compile(r"(,\s*|\s+that\s+|\s+of\s+)")
_MAX_PERMUTATIONS = 120
#: Scores token sequences (full prompt ids) by the base model's log-probability, one float each.
Scorer = Callable[[list[list[int]]], list[float]]


class VariantBuilder:
    """Candidate variants of each kind for one prompt (deterministic, before any shuffle)."""

    def __init__(self, tok: PreTrainedTokenizerBase, spec: VariantSpec, original: tuple[int, ...], target_ids: tuple[int, ...]) -> None:
        self.tok, self.spec, self.original, self.target_ids = tok, spec, original, target_ids
        self.plain = list(tok(spec.prompt, add_special_tokens=False)["input_ids"])
        self.offset = len(original) - len(self.plain)  # special tokens the tokenizer puts in front
        self.special = set(tok.all_special_ids)
        self.kept = [(m.start(), m.end()) for k in spec.keep for m in re.finditer(re.escape(k), spec.prompt)]  # char spans

    def _breaks(self, start: int, stop: int) -> bool:
        """Whether changing characters ``[start, stop)`` touches a kept phrase (``start == stop``: an insertion there splits one)."""
        if start == stop:
            return any(a < start < b for a, b in self.kept)
        return any(start < b and a < stop for a, b in self.kept)

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
            if self._breaks(at, at):
                continue
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

    def synonyms(self, top: torch.Tensor, score: Scorer) -> list[Variant]:
        """Single swaps, then double swaps of each word's best candidate.

        A word's candidates are the word-like tokens among the model's predictions at its
        position (``top``: (T, 4k) ids); the ``top_k`` kept are those whose swapped prompt the
        model finds most probable as a whole (``score``, one batched call), so the swap fits
        the words after it as well as those before.
        """
        found: list[tuple[int, int, str, int]] = []
        for start, stop, word in self._words():
            at = self.offset + start - 1  # the position predicting the word's first token
            chars = len(self._decode(self.plain[:start])), len(self._decode(self.plain[:stop]))
            if at >= 0 and not self._breaks(*chars):
                found += [(start, stop, word, c) for c in top[at].tolist() if self._word_like(c, word)]
        rows = [list(self.original[: self.offset]) + self._swapped([(s, e, c)]) for s, e, _, c in found]
        ranked = sorted(zip(score(rows) if rows else [], range(len(found)), strict=True), reverse=True)
        options: dict[tuple[int, int, str], list[int]] = {}
        for _, i in ranked:
            s, e, w, c = found[i]
            if len(options.setdefault((s, e, w), [])) < self.spec.top_k:
                options[(s, e, w)].append(c)
        out = []
        for (start, stop, word), cands in sorted(options.items()):
            for c in cands:
                v = self._swap([(start, stop, c)], f"{word.strip()!r} -> {self._decode([c]).strip()!r}")
                if v is not None:
                    out.append(v)
        for ((s1, e1, w1), c1), ((s2, e2, w2), c2) in itertools.combinations(sorted(options.items()), 2):
            v = self._swap([(s1, e1, c1[0]), (s2, e2, c2[0])], f"{w1.strip()!r}, {w2.strip()!r} swapped")
            if v is not None:
                out.append(v)
        return out

    def _word_like(self, c: int, word: str) -> bool:
        piece = self._decode([c])
        return c not in self.special and piece.startswith(" ") and piece.strip().isalpha() and piece.strip().lower() != word.strip().lower()

    def _swapped(self, swaps: list[tuple[int, int, int]]) -> list[int]:
        """The prompt's plain ids with each span ``[start, stop)`` replaced by one token."""
        ids = list(self.plain)
        for start, stop, c in sorted(swaps, reverse=True):  # right to left: earlier spans keep their indices
            ids[start:stop] = [c]
        return ids

    def _swap(self, swaps: list[tuple[int, int, int]], detail: str) -> Variant | None:
        return self._variant("synonym", self._decode(self._swapped(swaps)), detail)

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
