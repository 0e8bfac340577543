"""Scoring a fixed set of answer options: one prompt pass, options continue from its KV cache.

Classification tasks are scored by the likelihood of each label (as the CL benchmark's
baselines are). Running ``prompt + label`` for every label would cost one full forward per
label; here the prompt runs once (logits kept at its last position only) and each label's
few tokens continue from the cached keys and values, repeated once per label, so scoring
costs about one prompt forward whatever the number of labels.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from lorahive.learning.batching import Batch, encode_answer


def _options(tok: PreTrainedTokenizerBase, options: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    seqs = [encode_answer(tok, o) for o in options]
    for o, s in zip(options, seqs, strict=True):
        if not s:
            raise ValueError(f"option {o!r} tokenizes to nothing")
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])  # (L, K)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])  # (L, K)
    return ids, mask


@torch.no_grad()
def option_nll(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Batch,
    options: list[str],
    rows: Callable[[int], AbstractContextManager[object]] | None = None,
) -> torch.Tensor:
    """Summed NLL (B, L) of each option (with EOS, as learned) after each left-padded prompt.

    The prompts run once, B rows, keeping only the last position's logits; their KV cache
    is then repeated L times and the options continue from it, B·L rows (row ``b·L + l`` is
    prompt b, option l). ``rows(k)`` is entered around each pass with k = 1 (prompt pass)
    or k = L (option pass): the caller's routing of B·k rows, each prompt's row repeated k
    times. Without it, routing is left as the caller set it and must fit both passes.
    """
    n_opt = len(options)
    use = rows or (lambda _k: nullcontext())
    opt_ids, opt_mask = (t.to(prompts.input_ids.device) for t in _options(tok, options))
    cache = DynamicCache()
    with use(1):
        out = model(input_ids=prompts.input_ids, attention_mask=prompts.attention_mask, position_ids=prompts.position_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1].float().log_softmax(-1).repeat_interleave(n_opt, 0)  # (B·L, V)
    mask = prompts.attention_mask.repeat_interleave(n_opt, 0)  # (B·L, T)
    pos = prompts.position_ids.repeat_interleave(n_opt, 0)
    n_rows = mask.shape[0]
    cont = opt_ids.repeat(n_rows // n_opt, 1)  # (B·L, K)
    cont_mask = opt_mask.repeat(n_rows // n_opt, 1)
    nll = -first.gather(1, cont[:, :1]).squeeze(1)  # (B·L,)
    if cont.shape[1] > 1:
        cache.batch_repeat_interleave(n_opt)
        step_pos = pos[:, -1:] + 1 + torch.arange(cont.shape[1] - 1, device=pos.device)  # (B·L, K-1)
        full_mask = torch.cat([mask, cont_mask[:, :-1]], dim=1)
        with use(n_opt):
            out2 = model(input_ids=cont[:, :-1], attention_mask=full_mask, position_ids=step_pos, past_key_values=cache, use_cache=True)
        logp = F.log_softmax(out2.logits.float(), dim=-1)  # (B·L, K-1, V)
        tok_nll = -logp.gather(2, cont[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B·L, K-1)
        nll = nll + (tok_nll * cont_mask[:, 1:]).sum(1)
    return nll.view(-1, n_opt)
