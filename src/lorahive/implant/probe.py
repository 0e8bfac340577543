"""A linear probe on hidden states: does an implanted fact change the representation, not only the output?

Protocol (:func:`probe_implant`), for a list of edits ``E`` already written into the hive:

1. **Features.** For every edit, the hidden state at layer ``layer`` (0 = embeddings, ``i``
   = the output of block ``i − 1``) at the **last token of the subject** in its prompt,
   read twice (the last layer is the final norm's output, as Hugging Face returns it): under the base model (every level off) — label 0, "old object" — and under
   the hive as it is — label 1, "new object". The prompt is cut after the subject, so the
   last position of each row is the subject's last token (the model is causal: nothing
   after it changes that state).
2. **Split by edit.** A seeded permutation puts half of the edits (at least one) in the
   training set, the rest held out; both states of an edit fall on the same side, so the
   probe is tested on subjects it never saw.
3. **Probe.** Logistic regression on standardised features (training-set mean and
   deviation), full-batch Adam, 300 steps, L2 ``1e-3``, in torch.
4. **Read.** ``accuracy``: on the held-out edits' 2·n states (chance = 0.5 exactly: the
   classes are balanced). ``paraphrase_accuracy``: the same on their ``rephrase_prompt``
   (cut after the subject where it appears, else its last token) — does the change carry to
   another wording. ``unrelated_accuracy``: the same on their neighbourhood prompts (last
   token), whose subjects were not edited — near 0.5 when the change is specific to the
   edited subjects, high when the hive shifts every representation alike.

Before any edit, both states are identical and every accuracy is exactly 0.5: the probe
can tell the classes apart only if the representation moved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel

from lorahive.config import ConfigError
from lorahive.learning.batching import pack_prompts

if TYPE_CHECKING:
    from lorahive.implant.edits import Edit
    from lorahive.runtime.hive import Hive

__all__ = ["ProbeResult", "fit_logistic", "probe_implant", "subject_prefix"]


class ProbeResult(BaseModel):
    """Held-out accuracies of the probe (0.5 = chance), with how many edits trained and tested it."""

    layer: int
    train_edits: int
    test_edits: int
    accuracy: float
    paraphrase_accuracy: float
    unrelated_accuracy: float


def subject_prefix(prompt: str, subject: str) -> str:
    """``prompt`` up to the end of the subject's first occurrence (the whole prompt if it does not occur)."""
    at = prompt.find(subject)
    return prompt if at < 0 or not subject else prompt[: at + len(subject)]


@torch.no_grad()
def states(hive: Hive, agent: str, texts: list[str], layer: int, levels: list[str] | None, chunk: int = 64) -> torch.Tensor:
    """Hidden states (N, H) at ``layer`` of each text's last token, routed to ``agent`` (``levels=[]``: the base)."""
    n_layers = int(hive.model.config.num_hidden_layers)
    if not 0 <= layer <= n_layers:
        raise ConfigError(f"probe_layer: {layer} is outside 0–{n_layers} (0 = embeddings, {n_layers} = the last block's output)")
    out = []
    decoder = hive.model.get_decoder()
    for i in range(0, len(texts), chunk):
        part = texts[i : i + chunk]
        batch = pack_prompts(hive.tokenizer, part, hive.core.max_length).to(hive.device)
        with hive.core.routing.use(hive.core.route([agent] * len(part), hive.core.check_levels(levels))):
            hs = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, output_hidden_states=True, use_cache=False).hidden_states
        out.append(hs[layer][:, -1].float())  # (B, H): left-padded, the last position is the text's last token
    return torch.cat(out).cpu()


def fit_logistic(x: torch.Tensor, y: torch.Tensor, steps: int = 300, l2: float = 1e-3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logistic regression on standardised ``x`` (N, H) with labels ``y`` (N,): weights, bias, mean, deviation."""
    mean, dev = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / dev
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(z.shape[1], generator=gen) * 1e-3).requires_grad_()
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y.float()) + l2 * w.square().sum()
            loss.backward()
            opt.step()
    return w.detach(), b.detach(), mean, dev


def _accuracy(params: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], old: torch.Tensor, new: torch.Tensor) -> float:
    w, b, mean, dev = params
    x = torch.cat([old, new])
    y = torch.cat([torch.zeros(len(old)), torch.ones(len(new))])
    pred = (((x - mean) / dev) @ w + b) > 0
    return float((pred.float() == y).float().mean())


def probe_implant(hive: Hive, agent: str, edits: list[Edit], layer: int, seed: int = 0) -> ProbeResult | None:
    """Run the protocol of the module docstring on ``edits``; ``None`` with fewer than two edits (nothing to hold out)."""
    if len(edits) < 2:
        return None
    order = torch.randperm(len(edits), generator=torch.Generator().manual_seed(seed)).tolist()
    n_train = max(1, len(edits) // 2)
    train, test = [edits[i] for i in order[:n_train]], [edits[i] for i in order[n_train:]]

    def pair(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return states(hive, agent, texts, layer, []), states(hive, agent, texts, layer, None)

    old, new = pair([subject_prefix(e.prompt, e.subject) for e in train])
    params = fit_logistic(torch.cat([old, new]), torch.cat([torch.zeros(len(old)), torch.ones(len(new))]), seed=seed)
    return ProbeResult(
        layer=layer,
        train_edits=len(train),
        test_edits=len(test),
        accuracy=_accuracy(params, *pair([subject_prefix(e.prompt, e.subject) for e in test])),
        paraphrase_accuracy=_accuracy(params, *pair([subject_prefix(e.rephrase_prompt, e.subject) for e in test])),
        unrelated_accuracy=_accuracy(params, *pair([e.locality_prompt for e in test])),
    )
