"""CounterFact edits and their scores, batched through the hive.

Two families of scores, over the edits made so far (``k`` edits, each scored once):

* **ROME / CounterFact** (Meng et al., 2022): *efficacy* — the fraction of edits with
  ``P(target_new | prompt) > P(ground_truth | prompt)``; *paraphrase* — the same after
  ``rephrase_prompt``; *neighbourhood* — the fraction with
  ``P(locality_ground_truth | locality_prompt) > P(target_new | locality_prompt)``: an
  unrelated subject keeps its true object. As in ROME's evaluation code, answers are
  compared by their mean per-token log-probability (``length_normalised``; the paper writes
  ``P[o*] > P[o^c]``, the code divides each answer's NLL by its length); ``False`` compares
  whole-sequence probabilities.
* **EasyEdit** (Wang et al., 2023), token-level: *reliability* / *generalization* — the mean
  teacher-forced token accuracy of ``target_new`` after the prompt / the paraphrase (the
  argmax at each answer position equals the answer's token); *locality* — the fraction of
  ``locality_ground_truth`` positions whose argmax after the edits equals the argmax of the
  base model (1 when nothing changed).

Answers carry one leading space and no EOS (the published scores read the answer's own
tokens). All rows of a scoring call are teacher-forced in chunks of right-padded
prompt+answer rows; every chunk's results stay on the device and are read back once.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel

from lorahive.learning.batching import Batch, encode_answer, encode_prompt
from lorahive.learning.objective import _head, hidden_states
from lorahive.suites.pairs import KNOWLEDGE_FORMATS, PairsError, read_records
from lorahive.tensors import to_device

if TYPE_CHECKING:
    from lorahive.runtime.hive import Hive

__all__ = ["Edit", "EditScorer", "Scores", "TokenScores", "load_edits", "shipped_edits", "token_scores"]

#: Keys every CounterFact record needs: the pair reader's, plus the subject and the neighbourhood prompt.
RECORD_KEYS = (*KNOWLEDGE_FORMATS["counterfact"], "subject", "locality_prompt", "locality_ground_truth")


@dataclass(frozen=True)
class Edit:
    """One CounterFact edit: ``prompt`` about ``subject`` should now continue with ``target_new``."""

    case_id: int
    prompt: str
    subject: str
    target_new: str
    ground_truth: str
    rephrase_prompt: str
    locality_prompt: str
    locality_ground_truth: str


def spaced(answer: str) -> str:
    """``answer`` with one leading space, as a model writes it after a prompt."""
    return " " + answer.strip()


def shipped_edits() -> Path:
    """The 32-record CounterFact slice shipped in the package (``lorahive/data/knowledge/``; PROVENANCE.md there)."""
    return Path(str(resources.files("lorahive") / "data" / "knowledge" / "counterfact-32.json"))


def load_edits(path: str | Path | None = None, n: int | None = None) -> list[Edit]:
    """The first ``n`` (default all) edits of a CounterFact file (default: the shipped slice).

    Raises :class:`~lorahive.suites.pairs.PairsError` (field ``data`` or ``edits``) for an
    unreadable file, a record lacking a key, or more edits asked than the file holds.
    """
    where = Path(path) if path is not None else shipped_edits()
    records = read_records(where, "data", "CounterFact records")
    if n is not None and n > len(records):
        raise PairsError("edits", f"{n} edits asked; {where} holds {len(records)} records")
    out = []
    for i, r in enumerate(records[:n]):
        ok = isinstance(r, dict) and all(isinstance(r.get(k), str) and r[k].strip() for k in RECORD_KEYS)
        if not ok:
            raise PairsError("data", f"{where}: record {i} lacks one of {list(RECORD_KEYS)} as non-empty text")
        if r["target_new"].strip() == r["ground_truth"].strip():
            raise PairsError("data", f"{where}: record {i} has target_new equal to ground_truth")
        out.append(Edit(int(r.get("case_id", i)), *(str(r[k]).strip() for k in ("prompt", "subject", "target_new", "ground_truth", "rephrase_prompt", "locality_prompt", "locality_ground_truth"))))
    return out


@dataclass(frozen=True)
class TokenScores:
    """Teacher-forced answer tokens of N rows: per-row sums and means, and every token's argmax (host tensors)."""

    logp: torch.Tensor  # (N,) summed log-probability of the answer
    mean_logp: torch.Tensor  # (N,) per-token mean
    accuracy: torch.Tensor  # (N,) fraction of answer tokens that are the argmax
    argmax: torch.Tensor  # (M,) argmax at every answer position, rows in order
    lengths: list[int]  # answer tokens per row


def _pack(hive: Hive, rows: list[tuple[str, str]]) -> tuple[Batch, torch.Tensor, torch.Tensor, list[int]]:
    """Right-padded prompt+answer rows; the (row, position) predicting each answer token, the targets, the lengths."""
    tok = hive.tokenizer
    seqs = [(encode_prompt(tok, p), encode_answer(tok, a, eos=False)) for p, a in rows]
    for (p, a), (prompt, answer) in zip(seqs, rows, strict=True):
        if not p or not a:
            raise ValueError(f"row ({prompt!r}, {answer!r}) tokenizes to nothing")
    width = max(len(p) + len(a) for p, a in seqs)
    pad = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
    ids = torch.tensor([p + a + [pad] * (width - len(p) - len(a)) for p, a in seqs])
    mask = torch.tensor([[1] * (len(p) + len(a)) + [0] * (width - len(p) - len(a)) for p, a in seqs])
    at = torch.tensor([(i, len(p) - 1 + j) for i, (p, a) in enumerate(seqs) for j in range(len(a))]).t()  # (2, M)
    targets = torch.tensor([t for _, a in seqs for t in a])  # (M,)
    batch = Batch(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0))
    return batch.to(hive.device), to_device(at, hive.device), to_device(targets, hive.device), [len(a) for _, a in seqs]


@torch.no_grad()
def token_scores(hive: Hive, agent: str, rows: list[tuple[str, str]], levels: list[str] | None = None, chunk: int = 64) -> TokenScores:
    """Teacher-forced scores of each ``(prompt, answer)`` row routed to ``agent`` (``levels=[]``: the base model)."""
    rows_at, tok_logp, hits, tops = [], [], [], []
    lengths: list[int] = []
    active = hive.core.check_levels(levels)
    for i in range(0, len(rows), chunk):
        part = rows[i : i + chunk]
        batch, at, targets, n = _pack(hive, part)
        with hive.core.routing.use(hive.core.route([agent] * len(part), active)):
            h = hidden_states(hive.model, batch)  # (B, T, H)
            logp = _head(hive.model)(h[at[0], at[1]]).float().log_softmax(-1)  # (M, V)
        top = logp.argmax(-1)  # (M,)
        rows_at.append(at[0] + i)
        tok_logp.append(logp.gather(1, targets[:, None]).squeeze(1))
        hits.append((top == targets).float())
        tops.append(top)
        lengths += n
    row, lp = torch.cat(rows_at), torch.cat(tok_logp)
    zeros = torch.zeros(len(rows), device=lp.device)
    count = zeros.index_add(0, row, torch.ones_like(lp))
    total = zeros.index_add(0, row, lp)
    hit = zeros.index_add(0, row, torch.cat(hits))
    host = torch.stack([total, total / count, hit / count]).cpu()  # read back once per call, with the argmaxes below
    argmax = torch.cat(tops).cpu()
    return TokenScores(host[0], host[1], host[2], argmax, lengths)


class Scores(BaseModel):
    """The scores of ``n`` edits: ROME's three (fractions) and EasyEdit's three (mean token fractions)."""

    n: int
    efficacy: float
    paraphrase: float
    neighbourhood: float
    reliability: float
    generalization: float
    locality: float


class EditScorer:
    """Scores of the first ``k`` of a fixed list of edits, with the base model's locality argmaxes kept.

    Each scoring call teacher-forces six rows per edit (prompt and paraphrase with both
    answers, the neighbourhood prompt with its true object and with the new one).
    """

    def __init__(self, hive: Hive, agent: str, edits: list[Edit], length_normalised: bool = True) -> None:
        self.edits = edits
        self.normalised = length_normalised
        loc = token_scores(hive, agent, [(e.locality_prompt, spaced(e.locality_ground_truth)) for e in edits], levels=[])
        self.base_argmax = loc.argmax
        self.base_lengths = loc.lengths

    def rows(self, k: int) -> list[tuple[str, str]]:
        out = []
        for e in self.edits[:k]:
            new, old, true = spaced(e.target_new), spaced(e.ground_truth), spaced(e.locality_ground_truth)
            out += [(e.prompt, new), (e.prompt, old), (e.rephrase_prompt, new), (e.rephrase_prompt, old), (e.locality_prompt, true), (e.locality_prompt, new)]
        return out

    def outcomes(self, hive: Hive, agent: str, k: int, levels: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Per edit (k,): efficacy, paraphrase, neighbourhood as 0/1, reliability, generalization, locality as fractions."""
        if not 1 <= k <= len(self.edits):
            raise ValueError(f"k must be in [1, {len(self.edits)}], got {k}")
        ts = token_scores(hive, agent, self.rows(k), levels)
        p = (ts.mean_logp if self.normalised else ts.logp).view(k, 6)
        acc = ts.accuracy.view(k, 6)
        lengths = torch.tensor(ts.lengths).view(k, 6)
        m = int(sum(self.base_lengths[:k]))
        starts = torch.tensor([0, *ts.lengths]).cumsum(0)[:-1].view(k, 6)  # each row's first token in ts.argmax
        loc_now = torch.cat([ts.argmax[s : s + n] for s, n in zip(starts[:, 4].tolist(), lengths[:, 4].tolist(), strict=True)])
        same = (loc_now == self.base_argmax[:m]).float()
        owner = torch.repeat_interleave(torch.arange(k), torch.tensor(self.base_lengths[:k]))
        locality = torch.zeros(k).index_add(0, owner, same) / torch.tensor(self.base_lengths[:k], dtype=torch.float)
        return {
            "efficacy": (p[:, 0] > p[:, 1]).float(),
            "paraphrase": (p[:, 2] > p[:, 3]).float(),
            "neighbourhood": (p[:, 4] > p[:, 5]).float(),
            "reliability": acc[:, 0],
            "generalization": acc[:, 2],
            "locality": locality,
        }

    def score(self, hive: Hive, agent: str, k: int, levels: list[str] | None = None) -> Scores:
        """The six scores over the first ``k`` edits (``levels=[]``: the base model)."""
        return summarise(self.outcomes(hive, agent, k, levels))


def summarise(outcomes: dict[str, torch.Tensor], k: int | None = None) -> Scores:
    """Means of per-edit outcomes (the first ``k``, default all) as :class:`Scores`."""
    n = len(next(iter(outcomes.values()))) if k is None else k
    return Scores(n=n, **{name: float(v[:n].mean()) for name, v in outcomes.items()})
