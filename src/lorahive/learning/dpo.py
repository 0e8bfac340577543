"""Direct preference optimisation (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward Model").

For a prompt x with a chosen answer y_w and a rejected answer y_l, the policy π and a frozen
reference π_ref, the implicit reward of an answer is ``r(y) = β·(log π(y|x) − log π_ref(y|x))``
and the loss is ``−log σ(r(y_w) − r(y_l))`` (their eq. 7): the Bradley–Terry likelihood that
the chosen answer wins. Log-probabilities are summed over the answer's tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dpo_loss"]


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair ``(loss (P,), reward margin (P,))`` from summed answer log-probabilities, each (P,).

    The margin ``r(y_w) − r(y_l)`` is detached: it is what the loss pushes up, reported as is.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))  # (P,)
    return -F.logsigmoid(margin), margin.detach()
