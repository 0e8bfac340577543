"""One greedy decode step over rows that belong to different agents (per-row routing)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lorahive.learning.batching import Batch, _pad_id, _positions
from lorahive.learning.objective import last_logits
from lorahive.runtime.hive import Hive


@torch.no_grad()
def next_tokens(hive: Hive, rows: Sequence[Sequence[int]], agents: Sequence[str]) -> list[int]:
    """The greedy next token of each row (prompt + tokens so far), row i routed to ``agents[i]``.

    Rows are left-padded into one batch and run through the model in one forward, without a
    KV cache: a row may join or leave between two calls (continuous batching).
    """
    width = max(len(r) for r in rows)
    pad = _pad_id(hive.tokenizer)
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    batch = Batch(ids, mask, _positions(mask)).to(hive.device)
    with hive.core.routing.use(hive.core.route(list(agents))):
        logits = last_logits(hive.model, batch)
    return [int(t) for t in logits.argmax(-1).tolist()]
