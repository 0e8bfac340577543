"""Scoring a fixed set of answer options: one prompt pass, options continue from its KV cache.

Classification tasks are scored by the likelihood of each label (as the CL benchmark's
baselines are). Running ``prompt + label`` for every label would cost one full forward per
label; here each prompt runs once (B rows, logits of the last position only), its keys and
values are repeated for the L options, and only the options' few tokens run again, so
scoring costs about one prompt forward whatever the number of labels.

The two passes see different batches (B prompts, then B·L option rows), so the caller sets
the routing for each: :func:`prompt_pass` under B rows, :func:`option_pass` under B·L rows
where row ``b·L + l`` is prompt b, option l.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from lorahive.learning.batching import Batch, encode_answer
from lorahive.tensors import to_device


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
def prompt_pass(model: PreTrainedModel, prompts: Batch) -> tuple[torch.Tensor, DynamicCache]:
    """Next-token log-probs (B, V) after each left-padded prompt, and the prompts' KV cache."""
    cache = DynamicCache()
    out = model(
        input_ids=prompts.input_ids,
        attention_mask=prompts.attention_mask,
        position_ids=prompts.position_ids,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1].float().log_softmax(-1), out.past_key_values


@torch.no_grad()
def option_pass(model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: Batch, first: torch.Tensor, cache: DynamicCache, options: list[str]) -> torch.Tensor:
    """Summed NLL (B, L) of each option (with EOS, as learned), continuing ``cache`` in place."""
    n_opt, n_prompts = len(options), prompts.input_ids.shape[0]
    opt_ids, opt_mask = (to_device(t, prompts.input_ids.device) for t in _options(tok, options))
    nll = -first[:, opt_ids[:, 0]]  # (B, L): each option's first token after each prompt
    if opt_ids.shape[1] == 1:
        return nll
    cache.batch_repeat_interleave(n_opt)  # (B·L) rows: prompt b's cache for each option
    cont = opt_ids.repeat(n_prompts, 1)  # (B·L, K)
    cont_mask = opt_mask.repeat(n_prompts, 1)
    mask = prompts.attention_mask.repeat_interleave(n_opt, 0)
    last = prompts.position_ids[:, -1:].repeat_interleave(n_opt, 0)  # (B·L, 1)
    step_pos = last + 1 + torch.arange(cont.shape[1] - 1, device=last.device)  # (B·L, K-1)
    full_mask = torch.cat([mask, cont_mask[:, :-1]], dim=1)
    out = model(input_ids=cont[:, :-1], attention_mask=full_mask, position_ids=step_pos, past_key_values=cache, use_cache=True)
    logp = F.log_softmax(out.logits.float(), dim=-1)  # (B·L, K-1, V)
    tok_nll = -logp.gather(2, cont[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B·L, K-1)
    return nll + (tok_nll * cont_mask[:, 1:]).sum(1).view(n_prompts, n_opt)
