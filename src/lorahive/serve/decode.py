"""Greedy decode steps over rows that belong to different agents (per-row routing).

:func:`next_tokens` runs every row's whole text (prompt + answer so far) in one forward: no
cache. :class:`CachedDecoder` keeps one KV cache for the whole decode batch, one row per
running request, so a step feeds each row only its newest token:

* the cache is one ``DynamicCache`` of B rows, each row's real tokens right-aligned (left
  padding, masked); a row's position ids count its real tokens, so padding never shifts it;
* a row that leaves (done, cancelled) is dropped with one ``index_select`` on the batch
  dimension, and the columns no remaining row needs are cut off the left;
* rows that join are prefilled in one forward of their own (their prompt, routed to their
  agents) and their cache is concatenated under the batch's, the shorter side left-padded;
  the prefill gives their first token, so a joining row decodes in the step it joins;
* the routing of the batch (and with it the fused path's prepared weights, kept for the life
  of a routing under ``no_grad``) is made once per set of rows and reused while it holds;
* :meth:`CachedDecoder.reset` drops everything; the engine calls it whenever the levels are
  written (feedback learning, a serve tick's update, recovery), so the next step prefills
  every row again (prompt + answer so far) with the new weights: no stale keys, values or
  prepared weights, and a row's tokens are exactly what the cache-less path gives.

Models whose cache is not plain full attention (sliding-window layers), and transformers
before 4.56 (no per-layer cache objects), fall back to :func:`next_tokens`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from lorahive.adapters.routing import Routing
from lorahive.learning.batching import Batch, _pad_id, _positions
from lorahive.learning.objective import last_logits
from lorahive.runtime.hive import Hive

if TYPE_CHECKING:
    from transformers.cache_utils import DynamicLayer
try:
    from transformers.cache_utils import DynamicLayer as _Plain
except ImportError:  # transformers before 4.56 keeps its cache in per-layer lists: every step recomputes
    _Plain = None  # type: ignore[assignment,misc]


@torch.no_grad()
def next_tokens(hive: Hive, rows: Sequence[Sequence[int]], agents: Sequence[str]) -> list[int]:
    """The greedy next token of each row (prompt + tokens so far), row i routed to ``agents[i]``.

    Rows are left-padded into one batch and run through the model in one forward, without a
    KV cache: a row may join or leave between two calls (continuous batching).
    """
    with hive.core.routing.use(hive.core.route(list(agents))):
        logits = last_logits(hive.model, _padded(hive, rows))
    return [int(t) for t in logits.argmax(-1).tolist()]


def _padded(hive: Hive, rows: Sequence[Sequence[int]]) -> Batch:
    width = max(len(r) for r in rows)
    pad = _pad_id(hive.tokenizer)
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return Batch(ids, mask, _positions(mask)).to(hive.device)


class CachedDecoder:
    """The decode batch's KV cache; rows join and leave between steps (see the module docstring)."""

    def __init__(self, hive: Hive) -> None:
        self.hive = hive
        self.enabled = _Plain is not None  # False once the model's cache turned out not to be plain full attention
        self.prefilled = 0  # rows prefilled so far (joins, and every row after a reset)
        forward = cast(nn.Module, hive.model.get_decoder()).forward
        self._cache_arg = "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"  # renamed in transformers 5.x
        self.reset()

    def reset(self) -> None:
        """Forget every row (the levels changed): the next step prefills all of them again."""
        self.owners: list[object] = []  # the request of each cache row, in row order
        self.agents: list[str] = []
        self.lengths: list[int] = []  # real tokens of each row held in the cache
        self.pending: list[int] = []  # each row's newest token, not yet in the cache
        self.cache: DynamicCache | None = None
        self._routing: tuple[tuple[str, ...], Routing] | None = None

    @torch.no_grad()
    def step(self, owners: Sequence[object], rows: Sequence[Sequence[int]], agents: Sequence[str]) -> list[int]:
        """The greedy next token of each row (request ``owners[i]``: prompt + tokens so far, agent ``agents[i]``)."""
        if not self.enabled:
            return next_tokens(self.hive, rows, agents)
        at = {id(o): i for i, o in enumerate(self.owners)}
        kept: list[tuple[int, int]] = []  # (input index, cache row)
        fresh: list[int] = []
        for j, (o, r) in enumerate(zip(owners, rows, strict=True)):
            i = at.get(id(o))
            if i is not None and self.agents[i] == agents[j] and self.lengths[i] + 1 == len(r) and self.pending[i] == r[-1]:
                kept.append((j, i))
            else:
                fresh.append(j)
        self._select([i for _, i in kept])
        out: dict[int, int] = {}
        if kept:
            for (j, _), tok in zip(kept, self._decode(), strict=True):
                out[j] = tok
        if fresh:
            toks = self._join([owners[j] for j in fresh], [rows[j] for j in fresh], [agents[j] for j in fresh])
            if toks is None:  # not a plain cache: every step recomputes from now on
                self.enabled = False
                self.reset()
                return next_tokens(self.hive, rows, agents)
            out.update(zip(fresh, toks, strict=True))
        return [out[j] for j in range(len(rows))]

    # ------------------------------------------------------------------ the cache's rows
    def _layers(self) -> list[DynamicLayer]:
        assert self.cache is not None
        return cast("list[DynamicLayer]", self.cache.layers)

    def _select(self, keep: list[int]) -> None:
        """Keep cache rows ``keep`` (in that order) and cut the columns none of them needs."""
        if keep == list(range(len(self.owners))):
            return
        if not keep:
            self.reset()
            return
        width = max(self.lengths[i] for i in keep)
        idx = torch.tensor(keep, device=self.hive.device)
        for layer in self._layers():
            keys, values = _kv(layer)
            layer.keys, layer.values = keys.index_select(0, idx)[..., -width:, :], values.index_select(0, idx)[..., -width:, :]
        self.owners, self.agents = [self.owners[i] for i in keep], [self.agents[i] for i in keep]
        self.lengths, self.pending = [self.lengths[i] for i in keep], [self.pending[i] for i in keep]

    def _route(self, agents: Sequence[str]) -> Routing:
        key = tuple(agents)
        if self._routing is None or self._routing[0] != key:
            self._routing = (key, self.hive.core.route(list(key)))
        return self._routing[1]

    def _width(self) -> int:
        return _kv(self._layers()[0])[0].shape[-2]

    def _decode(self) -> list[int]:
        """One token for every cache row: its pending token in, its next token out."""
        dev = self.hive.device
        width = self._width()
        lengths = torch.tensor(self.lengths, device=dev)
        mask = (torch.arange(width + 1, device=dev)[None, :] >= (width - lengths)[:, None]).long()
        ids = torch.tensor(self.pending, device=dev)[:, None]
        with self.hive.core.routing.use(self._route(self.agents)):
            h = self._forward(ids, mask, lengths[:, None], self.cache)
        toks = [int(t) for t in self._head(h).argmax(-1).tolist()]
        self.lengths = [n + 1 for n in self.lengths]
        self.pending = toks
        return toks

    def _join(self, owners: list[object], rows: list[Sequence[int]], agents: list[str]) -> list[int] | None:
        """Prefill ``rows`` in one forward and put them under the cache's rows; their first tokens (None: not a plain cache)."""
        batch = _padded(self.hive, rows)
        cache = DynamicCache(config=self.hive.model.config)
        with self.hive.core.routing.use(self.hive.core.route(agents)):
            h = self._forward(batch.input_ids, batch.attention_mask, batch.position_ids, cache)
        if not all(type(layer) is _Plain for layer in cache.layers):
            return None
        toks = [int(t) for t in self._head(h).argmax(-1).tolist()]
        self.prefilled += len(rows)
        if self.cache is None:
            self.cache = cache
        else:
            for mine, new in zip(self._layers(), cast("list[DynamicLayer]", cache.layers), strict=True):
                (k1, v1), (k2, v2) = _kv(mine), _kv(new)
                mine.keys, mine.values = _stack(k1, k2), _stack(v1, v2)
        self.owners += owners
        self.agents += agents
        self.lengths += [len(r) for r in rows]
        self.pending += toks
        return toks

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache | None) -> torch.Tensor:
        """The decoder's last hidden state (B, H), filling ``cache``."""
        decoder = cast(nn.Module, self.hive.model.get_decoder())
        out: Any = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{self._cache_arg: cache})
        return cast(torch.Tensor, out.last_hidden_state[:, -1])

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, cast(nn.Module, self.hive.model.get_output_embeddings())(h)).float()


def _kv(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor]:
    assert layer.keys is not None and layer.values is not None
    return layer.keys, layer.values


def _stack(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rows of ``a`` (B1, h, L1, d) then of ``b`` (B2, h, L2, d), the shorter left-padded with zeros (masked)."""
    width = max(a.shape[-2], b.shape[-2])
    return torch.cat([F.pad(t, (0, 0, width - t.shape[-2], 0)) if t.shape[-2] < width else t for t in (a, b)])
