"""Captured decoding: greedy generation for rows of different agents, every decode step one CUDA graph replay.

A decode step feeds each row one token, so its arithmetic is small and its time is the launches
of the base model's kernels and the hive's per-module ones (docs/performance.md). :class:`CapturedDecode`
keeps the KV cache in a transformers ``StaticCache`` (fixed ``rows × (prompt + new_tokens)``), runs the
prompt's prefill eagerly, and records one decode step — the forward of the newest token at a cache
position read from a device buffer, its argmax written into the next step's input — once, then
replays it for every later step and every later call. What changes between steps (the position, the
mask column of the token just written) is written into static buffers before each replay.

The routing is :func:`lorahive.core.captured.static_routing`'s: every non-shared level per row from one
slot buffer, every level run, each module's levels pooled between calls. So the graph serves any mix
of agents; it is recorded again when the banks move, the levels or their mixing change, or a kept
weight had to be reallocated. ``merged=True`` folds the shared levels into the base weights
(adapters/merge.py). Before each call the host brings the kept weights up to date in place, so a
replay after learning decodes with the new levels. ``levels=False`` runs every level off — the bare model's
own captured decoding, the fair limit a captured hive decode is read against (benchmarks/gpu/forward.py). Without CUDA (or ``graph=False``) the same steps run
eagerly — the CPU tests check those against ``generate``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from transformers import StaticCache

from lorahive.adapters import Routing
from lorahive.core.captured import baked, record, refresh_kept, static_routing, uses_graph

if TYPE_CHECKING:
    from lorahive.core.model import HiveCore

__all__ = ["CapturedDecode"]


class CapturedDecode:
    """``new_tokens`` greedy tokens for each of ``rows`` prompts of ``prompt`` tokens (left-padded), one agent per row."""

    def __init__(self, core: HiveCore, rows: int, prompt: int, new_tokens: int, graph: bool | None = None, merged: bool = False, levels: bool = True) -> None:
        if rows < 1 or prompt < 1 or new_tokens < 1:
            raise ValueError(f"CapturedDecode: rows, prompt and new_tokens must be ≥ 1, got rows={rows}, prompt={prompt}, new_tokens={new_tokens}")
        self.core, self.rows, self.prompt, self.new, self.merged, self.levels = core, rows, prompt, new_tokens, merged, levels
        device = core.device
        self.graph = uses_graph("CapturedDecode", device, graph)
        self.cache = StaticCache(config=core.model.config, max_cache_len=prompt + new_tokens)
        self._cache_kw = "cache" if "cache" in inspect.signature(core.model.forward).parameters else "past_key_values"
        self.slot = torch.zeros(rows, dtype=torch.long, device=device)
        self.mask = torch.zeros(rows, prompt + new_tokens, dtype=torch.long, device=device)
        self.token = torch.zeros(rows, 1, dtype=torch.long, device=device)  # the step's input
        self.position = torch.zeros(rows, 1, dtype=torch.long, device=device)  # its position id per row
        self.at = torch.zeros(1, dtype=torch.long, device=device)  # its cache position
        self._graph: torch.cuda.CUDAGraph | None = None
        self._next = self.slot  # the recorded step's output buffer (set when recorded)
        self._key: tuple[object, ...] | None = None
        self.captures = 0  # how many times the step was recorded

    def __call__(self, input_ids: torch.Tensor, agents: Sequence[str], attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The new tokens, ``(rows, new_tokens)``; ``attention_mask`` marks left padding (absent: none)."""
        shape = (self.rows, self.prompt)
        if tuple(input_ids.shape) != shape:
            raise ValueError(f"CapturedDecode: input_ids must be {shape} as built, got {tuple(input_ids.shape)}")
        if len(agents) != self.rows:
            raise ValueError(f"CapturedDecode: one agent per row ({self.rows}) is needed, got {len(agents)}")
        if attention_mask is not None and tuple(attention_mask.shape) != shape:
            raise ValueError(f"CapturedDecode: attention_mask must be {shape}, got {tuple(attention_mask.shape)}")
        self.slot.copy_(self.core.index(self.core.agent_index(agents)), non_blocking=True)
        prompt_mask = torch.ones(shape, dtype=torch.long, device=self.mask.device) if attention_mask is None else attention_mask.to(self.mask.device, torch.long)
        self.mask.zero_()
        self.mask[:, : self.prompt].copy_(prompt_mask)
        positions = (prompt_mask.cumsum(1) - 1).clamp(min=0)
        self.cache.reset()
        out = torch.empty(self.rows, self.new, dtype=torch.long, device=self.mask.device)
        key = (baked(self.core), refresh_kept(self.core, self.slot, self.merged)) if self.levels else ()
        logits = self._run(input_ids.to(self.mask.device), positions, torch.arange(self.prompt, device=self.mask.device))
        out[:, 0] = logits.argmax(-1)
        self.token.copy_(out[:, :1])
        self.position.copy_(positions[:, -1:])
        for step in range(1, self.new):
            at = self.prompt + step - 1  # where the newest token goes
            self.mask[:, at] = 1
            self.position.add_(1)
            self.at.fill_(at)
            if not self.graph:
                out[:, step] = self._step()
                continue
            key_now = (*key, self._cache_ptrs())
            if self._graph is None or key_now != self._key:
                token = self.token.clone()  # the warm-ups step too: put the input back, the replay rewrites their cache column
                self._graph, self._next = record(self._step)
                self.token.copy_(token)
                self._key = key_now
                self.captures += 1
            self._graph.replay()
            out[:, step] = self._next
        return out

    def _cache_ptrs(self) -> tuple[int, ...]:
        """Where the cache's tensors are (allocated at the first prefill): a step recorded over others must be recorded again."""
        layers: list[Any] = list(self.cache.layers)
        return tuple(t.data_ptr() for layer in layers for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None)

    def _seek(self) -> None:
        """Point every layer's write position at ``self.at``.

        ``StaticLayer.update`` (transformers 5.17, 5.25) ignores ``cache_position``: it writes at its own device
        counter ``cumulative_length`` and advances it. Left alone, the recording's two warm-up steps advance it too,
        so the replays would write two columns late, the last one past the cache (``index_copy_`` out of bounds).
        """
        for layer in self.cache.layers:
            length = getattr(layer, "cumulative_length", None)
            if isinstance(length, torch.Tensor):
                length.copy_(self.at.view(()))

    def _run(self, ids: torch.Tensor, positions: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """Last-position logits of ``ids`` at cache positions ``at`` (the prefill, or one step)."""
        kw: dict[str, Any] = {self._cache_kw: self.cache}
        routing = static_routing(self.core, self.slot) if self.levels else Routing(active=frozenset(), pooled=True)
        with torch.no_grad(), self.core.routing.merging(self.merged), self.core.routing.use(routing):
            out = self.core.model(input_ids=ids, attention_mask=self.mask, position_ids=positions, cache_position=at, use_cache=True, logits_to_keep=1, **kw)
        return out.logits[:, -1]

    def _step(self) -> torch.Tensor:
        """One decode step on the static buffers: the next tokens, also written as the next step's input."""
        self._seek()
        nxt = self._run(self.token, self.position, self.at).argmax(-1)
        self.token.copy_(nxt.unsqueeze(1))
        return nxt
