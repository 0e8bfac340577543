"""Tokenizing and packing prompts and (prompt, answer) examples of many agents into one batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from lorahive.tensors import to_device

IGNORE = -100


def as_answer(answer: str) -> str:
    """Answers follow the prompt after one space, as a model would write them (the form every learning row carries)."""
    return answer if answer.startswith(" ") else " " + answer


@dataclass(frozen=True)
class Batch:
    """A padded batch. ``labels`` is ``IGNORE`` everywhere but on answer tokens."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T)
    labels: torch.Tensor | None = None  # (B, T)
    answer_at: torch.Tensor | None = None  # (2, N): row and position predicting each answer token
    anchor_at: torch.Tensor | None = None  # (2, M): row and position predicting a prompt token (the anchor's positions)
    anchor_rows: tuple[int, ...] = ()  # on the host: how many of the anchor's positions each row has (rows in order)

    def to(self, device: torch.device | str) -> Batch:
        """The batch on ``device``, copied without a host synchronisation (:func:`to_device`)."""
        labels = None if self.labels is None else to_device(self.labels, device)
        at = None if self.answer_at is None else to_device(self.answer_at, device)
        anchor = None if self.anchor_at is None else to_device(self.anchor_at, device)
        return Batch(to_device(self.input_ids, device), to_device(self.attention_mask, device), to_device(self.position_ids, device), labels, at, anchor, self.anchor_rows)


def _pad_id(tok: PreTrainedTokenizerBase) -> int:
    if tok.pad_token_id is not None:
        return int(tok.pad_token_id)
    if tok.eos_token_id is not None:
        return int(tok.eos_token_id)
    return 0


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def encode_prompt(tok: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    return list(tok(prompt, add_special_tokens=True)["input_ids"])


def encode_answer(tok: PreTrainedTokenizerBase, answer: str, eos: bool = True) -> list[int]:
    ids = list(tok(answer, add_special_tokens=False)["input_ids"])
    if eos and ids and tok.eos_token_id is not None:
        ids.append(int(tok.eos_token_id))
    return ids


def pad_right(tok: PreTrainedTokenizerBase, seqs: list[list[int]]) -> Batch:
    """Token id rows padded on the right, so position *j* of a row is its *j*-th token (for reading states at known tokens)."""
    width = max(len(s) for s in seqs)
    pad = _pad_id(tok)
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    return Batch(ids, mask, _positions(mask))


def pack_prompts(tok: PreTrainedTokenizerBase, prompts: list[str], max_length: int) -> Batch:
    """Left-pad prompts, so the last position of every row is its last prompt token."""
    seqs = [encode_prompt(tok, p) for p in prompts]
    for i, s in enumerate(seqs):
        if not s:
            raise ValueError(f"prompt {i} tokenizes to nothing")
        if len(s) > max_length:
            raise ValueError(f"prompt {i} has {len(s)} tokens; the context holds {max_length}")
    width = max(len(s) for s in seqs)
    pad = _pad_id(tok)
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    return Batch(ids, mask, _positions(mask))


def pack_examples(tok: PreTrainedTokenizerBase, examples: list[tuple[str, str]], max_length: int, anchor_positions: int = 0) -> Batch:
    """Right-pad prompt+answer rows; loss is taken on answer tokens only.

    With ``anchor_positions`` > 0, up to that many positions per row that predict a *prompt*
    token, evenly spaced, are listed in ``anchor_at`` (the foundation anchor's positions).
    """
    rows: list[tuple[list[int], list[int]]] = []
    for i, (prompt, answer) in enumerate(examples):
        p, a = encode_prompt(tok, prompt), encode_answer(tok, answer)
        if not p:
            raise ValueError(f"example {i}: the prompt tokenizes to nothing")
        if not a or (len(a) == 1 and a[0] == tok.eos_token_id):
            raise ValueError(f"example {i}: the answer {answer!r} tokenizes to nothing")
        if len(p) + len(a) > max_length:
            raise ValueError(f"example {i}: prompt + answer is {len(p) + len(a)} tokens; the context holds {max_length}")
        rows.append((p, a))
    width = max(len(p) + len(a) for p, a in rows)
    pad = _pad_id(tok)
    ids, mask, labels = [], [], []
    for p, a in rows:
        n = len(p) + len(a)
        ids.append(p + a + [pad] * (width - n))
        mask.append([1] * n + [0] * (width - n))
        labels.append([IGNORE] * len(p) + a + [IGNORE] * (width - n))
    m = torch.tensor(mask)
    lab = torch.tensor(labels)
    at = (lab[:, 1:] != IGNORE).nonzero().t().contiguous()  # (2, N), found on the host
    anchor = None
    counts: tuple[int, ...] = ()
    if anchor_positions > 0:
        spaced = [_spaced(len(p) - 1, anchor_positions) for p, _ in rows]
        picks = [(i, t) for i, ts in enumerate(spaced) for t in ts]
        anchor = torch.tensor(picks, dtype=torch.long).t().contiguous() if picks else None  # (2, M)
        counts = tuple(len(ts) for ts in spaced) if picks else ()
    return Batch(torch.tensor(ids), m, _positions(m), lab, at, anchor, counts)


def _spaced(n: int, k: int) -> list[int]:
    """Up to ``k`` evenly spaced positions of ``range(n)`` (position t predicts prompt token t + 1)."""
    if n <= 0:
        return []
    if n <= k:
        return list(range(n))
    return sorted({round(j * (n - 1) / (k - 1)) for j in range(k)}) if k > 1 else [n - 1]
