"""Answer-only next-token cross-entropy, with logits computed only where a label exists.

The vocabulary of small LMs is ~49k–150k; projecting every position to it would dominate
the step, so hidden states are gathered at answer positions before the LM head.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from lorahive.learning.batching import IGNORE, Batch


def hidden_states(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Final hidden states (B, T, H) of the decoder, without the LM head."""
    decoder = cast(nn.Module, model.get_decoder())
    out = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False)
    return out.last_hidden_state


def _head(model: PreTrainedModel) -> nn.Module:
    return cast(nn.Module, model.get_output_embeddings())


def last_logits(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Logits (B, V) of the last position of left-padded rows."""
    h = hidden_states(model, batch)[:, -1]  # (B, H)
    return _head(model)(h).float()


def answer_nll(model: PreTrainedModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed NLL of answer tokens and per-row answer token counts, each (B,)."""
    assert batch.labels is not None
    h = hidden_states(model, batch)  # (B, T, H)
    target = batch.labels[:, 1:]  # (B, T-1): token t+1 is predicted at position t
    if batch.answer_at is not None:  # positions found on the host: no device read-back
        rows, pos = batch.answer_at[0], batch.answer_at[1]  # (N,), (N,)
    else:
        rows, pos = (target != IGNORE).nonzero().unbind(1)
    logits = _head(model)(h[rows, pos]).float()  # (N, V)
    nll = F.cross_entropy(logits, target[rows, pos], reduction="none")  # (N,)
    n_rows = batch.input_ids.shape[0]
    total = torch.zeros(n_rows, device=nll.device, dtype=nll.dtype).index_add(0, rows, nll)
    count = torch.zeros(n_rows, device=nll.device, dtype=nll.dtype).index_add(0, rows, torch.ones_like(nll))
    return total, count


def anchor_logp(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Log-probabilities (M, V) of the next token at ``batch.anchor_at``, no gradient.

    Called with every level switched off, these are the foundation's own predictions on the
    prompts' text: what the anchor keeps the hive close to.
    """
    assert batch.anchor_at is not None
    with torch.no_grad():
        h = hidden_states(model, batch)
        return F.log_softmax(_head(model)(h[batch.anchor_at[0], batch.anchor_at[1]]).float(), dim=-1)


def anchored_nll(model: PreTrainedModel, batch: Batch, base: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`answer_nll` plus, per row, the mean ``KL(base ‖ model)`` at ``batch.anchor_at`` ((B,), zeros without ``base``).

    One forward: the answer positions and the anchor positions share the hidden states.
    """
    assert batch.labels is not None
    h = hidden_states(model, batch)
    target = batch.labels[:, 1:]
    if batch.answer_at is not None:
        rows, pos = batch.answer_at[0], batch.answer_at[1]
    else:
        rows, pos = (target != IGNORE).nonzero().unbind(1)
    head = _head(model)
    nll = F.cross_entropy(head(h[rows, pos]).float(), target[rows, pos], reduction="none")
    n_rows = batch.input_ids.shape[0]
    total = torch.zeros(n_rows, device=nll.device, dtype=nll.dtype).index_add(0, rows, nll)
    count = torch.zeros(n_rows, device=nll.device, dtype=nll.dtype).index_add(0, rows, torch.ones_like(nll))
    kl = torch.zeros(n_rows, device=nll.device, dtype=nll.dtype)
    if base is not None and batch.anchor_at is not None:
        ar, ap = batch.anchor_at[0], batch.anchor_at[1]
        logp = F.log_softmax(head(h[ar, ap]).float(), dim=-1)  # (M, V)
        per = (base.exp() * (base - logp)).sum(-1)  # (M,)
        n = torch.zeros_like(kl).index_add(0, ar, torch.ones_like(per))
        kl = kl.index_add(0, ar, per) / n.clamp_min(1.0)
    return total, count, kl
