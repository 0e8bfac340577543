"""Scoring a fixed set of answer options: one prompt pass, options continue from its KV cache.

Classification tasks are scored by the likelihood of each label (as the CL benchmark's
baselines are). Running ``prompt + label`` for every label would cost one full forward per
label; here each prompt runs once (B rows, logits of the last position only), and the
options' tokens after their first run once more, packed side by side in one continuation
of each prompt's row: a 4D attention mask lets each option's tokens see the prompt and the
option's own earlier tokens only, with the positions they would have after the prompt. No
option is padded to the longest and the prompts' keys and values are not copied per option,
so scoring costs about one prompt forward plus the options' own tokens, whatever their number.

Both passes run the same B rows, so the caller sets one routing for both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from lorahive.learning.batching import Batch, encode_answer
from lorahive.tensors import to_device


def _options(tok: PreTrainedTokenizerBase, options: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each option's first token (L,), and its later tokens packed: inputs, targets, owners and steps, each (S,).

    Option l's tokens ``t_1 … t_n`` (EOS included) put ``t_1 … t_{n-1}`` in the packed row as
    inputs, each predicting the next (``t_2 … t_n``); ``step`` is the input's place after the
    prompt (0 for ``t_1``).
    """
    seqs = [encode_answer(tok, o) for o in options]
    for o, s in zip(options, seqs, strict=True):
        if not s:
            raise ValueError(f"option {o!r} tokenizes to nothing")
    inputs = [t for s in seqs for t in s[:-1]]
    targets = [t for s in seqs for t in s[1:]]
    owners = [i for i, s in enumerate(seqs) for _ in s[1:]]
    steps = [j for s in seqs for j in range(len(s) - 1)]
    return torch.tensor([s[0] for s in seqs]), torch.tensor(inputs, dtype=torch.long), torch.tensor(targets, dtype=torch.long), torch.tensor([owners, steps], dtype=torch.long)


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
    dev = prompts.input_ids.device
    heads, inputs, targets, where = (to_device(t, dev) for t in _options(tok, options))
    nll = -first[:, heads]  # (B, L): each option's first token after each prompt
    if inputs.numel() == 0:
        return nll
    n_prompts, n_packed = prompts.input_ids.shape[0], inputs.shape[0]
    owner, step = where[0], where[1]  # (S,), (S,)
    own = (owner[:, None] == owner[None, :]) & (step[None, :] <= step[:, None])  # (S, S): an option's own earlier tokens
    sees = torch.cat([prompts.attention_mask.bool()[:, None, :].expand(-1, n_packed, -1), own.expand(n_prompts, -1, -1)], dim=2)  # (B, S, T + S)
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(sees.shape, dtype=dtype, device=dev).masked_fill_(~sees, torch.finfo(dtype).min)[:, None]  # (B, 1, S, T + S)
    position = prompts.position_ids[:, -1:] + 1 + step  # (B, S)
    out = model(input_ids=inputs.expand(n_prompts, -1), attention_mask=mask, position_ids=position, past_key_values=cache, use_cache=True)
    logp = F.log_softmax(out.logits.float(), dim=-1)  # (B, S, V)
    tok_nll = -logp.gather(2, targets.expand(n_prompts, -1).unsqueeze(-1)).squeeze(-1)  # (B, S)
    return nll.index_add(1, owner, tok_nll)
