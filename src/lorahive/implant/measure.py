"""Small measurements the drift map and the curriculum share: probe distributions, KL, the target's fit.

Everything returns device tensors; the caller reads back what it needs once per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from lorahive.learning.batching import Batch, encode_answer, encode_prompt
from lorahive.learning.objective import hidden_states
from lorahive.runtime.hive import Hive
from lorahive.tensors import to_device

__all__ = ["mean_kl", "probe_logp", "target_fit"]


def probe_logp(hive: Hive, agent: str, prompts: Sequence[str], levels: Sequence[str] | None = None) -> torch.Tensor:
    """Next-token log-probabilities (P, V) after each probe prompt, routed to ``agent`` with ``levels`` on (``[]``: the base)."""
    return F.log_softmax(hive.logits(list(prompts), [agent] * len(prompts), levels=levels), dim=-1)


def mean_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``KL(p ‖ q)`` between log-probability rows (N, V); exactly 0 when they are equal."""
    return (p.exp() * (p - q)).sum(-1).mean()


@torch.no_grad()
def target_fit(hive: Hive, agent: str, prompt: str, target: str, levels: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean NLL of the target's tokens after ``prompt`` (no EOS), and whether greedy decoding would produce them all.

    Teacher-forced, one forward: the second value is 1.0 when every target token is the
    argmax at its position (greedy generation then starts with the target), else 0.0.
    """
    p = encode_prompt(hive.tokenizer, prompt)
    t = encode_answer(hive.tokenizer, target, eos=False)
    if not p or not t:
        raise ValueError(f"target_fit: prompt {prompt!r} and target {target!r} must both tokenize to something")
    ids = to_device(torch.tensor([p + t]), hive.device)  # (1, T), copied without waiting for the device
    mask = torch.ones_like(ids)
    batch = Batch(ids, mask, torch.arange(ids.shape[1], device=hive.device)[None])
    with hive.core.routing.use(hive.core.route([agent], hive.core.check_levels(levels))):
        h = hidden_states(hive.model, batch)[0, len(p) - 1 : len(p) + len(t) - 1]  # (m, H): the positions predicting the target
        logits = cast(nn.Module, hive.model.get_output_embeddings())(h).float()  # (m, V)
    want = ids[0, len(p) :]
    nll = F.cross_entropy(logits, want)
    return nll, (logits.argmax(-1) == want).all().float()
