"""Scoring a fixed set of answer options: one prompt pass, options continue from its KV cache.

Classification tasks are scored by the likelihood of each label (as the CL benchmark's
baselines are). Running ``prompt + label`` for every label would cost one full forward per
label; here the prompt runs once and each label's few tokens continue from the cached keys
and values, so scoring costs about one prompt forward whatever the number of labels.
"""

from __future__ import annotations

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
def option_nll(model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: Batch, options: list[str]) -> torch.Tensor:
    """Summed NLL (B, L) of each option (with EOS, as learned) after each left-padded prompt.

    The caller sets the routing for ``B * L`` rows: row ``b * L + l`` is prompt b, option l.
    """
    n_opt = len(options)
    opt_ids, opt_mask = (t.to(prompts.input_ids.device) for t in _options(tok, options))
    ids = prompts.input_ids.repeat_interleave(n_opt, 0)  # (B·L, T)
    mask = prompts.attention_mask.repeat_interleave(n_opt, 0)
    pos = prompts.position_ids.repeat_interleave(n_opt, 0)
    cache = DynamicCache()
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
    first = out.logits[:, -1].float().log_softmax(-1)  # (B·L, V)
    rows = ids.shape[0]
    cont = opt_ids.repeat(rows // n_opt, 1)  # (B·L, K)
    cont_mask = opt_mask.repeat(rows // n_opt, 1)
    nll = -first.gather(1, cont[:, :1]).squeeze(1)  # (B·L,)
    if cont.shape[1] > 1:
        step_pos = pos[:, -1:] + 1 + torch.arange(cont.shape[1] - 1, device=pos.device)  # (B·L, K-1)
        full_mask = torch.cat([mask, cont_mask[:, :-1]], dim=1)
        out2 = model(input_ids=cont[:, :-1], attention_mask=full_mask, position_ids=step_pos, past_key_values=out.past_key_values, use_cache=True)
        logp = F.log_softmax(out2.logits.float(), dim=-1)  # (B·L, K-1, V)
        tok_nll = -logp.gather(2, cont[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B·L, K-1)
        nll = nll + (tok_nll * cont_mask[:, 1:]).sum(1)
    return nll.view(-1, n_opt)
