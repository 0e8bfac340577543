"""Micro-variants of one prompt and its target: small, controlled token-level differences (seed note 001).

Note 001 asks to change a model inside its own vocabulary, a token or two at a time: the same
text shown in 50+ versions that differ by a marker, a synonym the model itself expects, a
different clause order, or a target continuation that grows one or two tokens per version.
:func:`make_variants` builds them, deterministically from a seed. Kinds:

* ``growth`` — the prompt unchanged; the answer is the first 1, 1 + g, 1 + 2g, … tokens of the
  target (g = ``growth``, 1 or 2), up to the whole target. Its ``answer_ids`` are prefixes of
  the target's tokens.
* ``marker`` — a short marker phrase ("Fact:", "Note that", …) inserted before one word.
* ``synonym`` — one or two words replaced by a word-like token (a leading space, letters only)
  among the base model's own next-token predictions at that position; of those, the ``top_k``
  whose swapped prompt the base model finds most probable as a whole are kept, so a swap fits
  the words after it too.
* ``reorder`` — the prompt's clauses (split at commas, " that ", " of ") permuted, the last
  clause kept last because the answer continues it. Needs three clauses or more.

A kind that does not apply to a prompt (no clauses to reorder, no word-like prediction) is
skipped and the others fill its share. Every variant's ids are what the base tokenizer makes
of its text, so it lies in the base vocabulary by construction; ``distance`` is the token
edit distance of its prompt to the original prompt (growth variants differ in the answer
only: distance 0, and ``len(answer_ids)`` says how far they grew).
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorahive.adapters import Routing
from lorahive.implant.kinds import VariantBuilder
from lorahive.implant.spec import DEFAULT_MARKERS, KINDS, Variant, VariantSpec, edit_distance
from lorahive.learning.batching import encode_answer, encode_prompt
from lorahive.runtime.hive import Hive

__all__ = ["DEFAULT_MARKERS", "KINDS", "Variant", "VariantSpec", "edit_distance", "make_variants"]  # the first five live in spec.py

def make_variants(
    model: Hive | PreTrainedModel, prompt: str, target: str, n: int = 50, seed: int = 0, *,
    tokenizer: PreTrainedTokenizerBase | None = None, top_k: int = 8, growth: int = 1, markers: tuple[str, ...] = DEFAULT_MARKERS,
    keep: tuple[str, ...] = (),
) -> list[Variant]:  # fmt: skip
    """``n`` distinct micro-variants of ``prompt`` → ``target``, every applicable kind present.

    ``model`` is a :class:`Hive` (its base model runs with every level off) or a plain causal
    LM with its ``tokenizer``; it supplies the synonym candidates. Kinds are taken in turn
    (growth, marker, synonym, reorder), each from its own seeded shuffle, so the mix is even
    and the same seed gives the same list. Returned sorted by kind, then distance. ``keep``
    names phrases (a fact's subject, say) that no swap replaces a word of and no marker splits.
    """
    spec = VariantSpec(prompt=prompt, target=target, n=n, seed=seed, top_k=top_k, growth=growth, markers=tuple(markers), keep=tuple(keep))
    tok = model.tokenizer if isinstance(model, Hive) else tokenizer
    if tok is None:
        raise ValueError("tokenizer: needed with a plain model (a Hive brings its own)")
    original = tuple(encode_prompt(tok, spec.prompt))
    target_ids = tuple(encode_answer(tok, spec.target, eos=False))
    if not original:
        raise ValueError(f"prompt: {spec.prompt!r} tokenizes to nothing")
    if not target_ids:
        raise ValueError(f"target: {spec.target!r} tokenizes to nothing")
    build = VariantBuilder(tok, spec, original, target_ids)
    pools = {
        "growth": build.growth(),
        "marker": build.markers(),
        "synonym": build.synonyms(_top_k(model, tok, original, 4 * spec.top_k), lambda rows: _sequence_logp(model, rows)),
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


def _forward(model: Hive | PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V) of the base model: a Hive's with every level off, a plain model as it is."""
    lm = model.model if isinstance(model, Hive) else model
    if isinstance(model, Hive):
        with model.core.routing.use(Routing(active=frozenset())):
            return lm(input_ids=ids, attention_mask=mask).logits
    return lm(input_ids=ids, attention_mask=mask).logits


def _device(model: Hive | PreTrainedModel) -> torch.device:
    return model.device if isinstance(model, Hive) else next(model.parameters()).device


@torch.no_grad()
def _top_k(model: Hive | PreTrainedModel, tok: PreTrainedTokenizerBase, ids: tuple[int, ...], k: int) -> torch.Tensor:
    """The base model's top-``k`` next-token ids (T, k) after every prefix of ``ids``, in one forward."""
    x = torch.tensor([ids], device=_device(model))
    logits = _forward(model, x, torch.ones_like(x))[0, :, : len(tok)]  # (T, V): ids past the tokenizer's vocabulary are never proposed
    return logits.topk(min(k, logits.shape[-1]), dim=-1).indices.cpu()


@torch.no_grad()
def _sequence_logp(model: Hive | PreTrainedModel, rows: list[list[int]], chunk: int = 32) -> list[float]:
    """The base model's log-probability of each token sequence (every token after the first), in batched forwards; one read-back."""
    out = []
    for i in range(0, len(rows), chunk):
        part = rows[i : i + chunk]
        width = max(len(r) for r in part)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in part], device=_device(model))  # (B, T) right-padded
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in part], device=ids.device)
        logp = F.log_softmax(_forward(model, ids, mask)[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1)
        out.append((logp * mask[:, 1:]).sum(-1))
    return torch.cat(out).tolist() if out else []
