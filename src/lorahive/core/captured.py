"""A captured forward: the whole multi-level, multi-agent forward of one batch shape as one CUDA graph.

A hive's forward launches a few kernels per wrapped module and level kind (the gathers of each
row's slot, one shrink and one expand) besides the base model's own: on a GPU the per-agent
terms cost more in launches than in arithmetic (docs/performance.md). :class:`CapturedForward`
records the forward of a fixed ``(rows, tokens)`` batch once and replays it: what varies between
calls sits in static device buffers — token ids, attention mask, and the one slot index per row
that every per-agent and per-task level reads — and each call copies into them and replays.

The routing the graph is recorded with treats every level that is not shared as per-row (never
"all rows on one slot"), and runs every level, zero or not. So a replay whose batch holds more
(or fewer) distinct agents than the batch it was recorded with runs the same kernels on other
indices — the failure of serving engines that replayed a graph recorded with fewer adapters
cannot happen — and a level that was zero at capture and has learned since is not skipped. The
banks are read where they are at replay, so learning between calls is seen; the graph is
recorded again when anything it baked in changes: a bank's storage (agents added grow the
banks), the stack's levels, their mixing coefficients.

Shared levels run live unless ``merged=True``: then they are folded into one weight per module
(adapters/merge.py) and only the per-row terms run in the graph. A merged weight is rebuilt on
the host when a shared level changes, which a replay alone would skip, so each call first
refreshes the merged weights — in their own storage, the storage the graph reads — and a replay
after learning sees the new shared levels as the eager forward does. The same holds for the
levels of each module, kept concatenated and cast between calls (``Routing.pooled``,
adapters/fused.py): inside the graph a module gathers its rows' weights in one index per factor
instead of one per level, and the host rebuilds the pool in place when a level changed.

Without CUDA (or with ``graph=False``) the same static routing runs eagerly, which is what the
CPU tests check against the hive's ordinary routing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import torch

from lorahive.adapters import Routing
from lorahive.adapters.fused import refresh
from lorahive.adapters.merge import mergeable, merged_weight, without

if TYPE_CHECKING:
    from lorahive.core.model import HiveCore

__all__ = ["CapturedForward", "baked", "record", "refresh_kept", "static_routing", "uses_graph"]

T = TypeVar("T")


class CapturedForward:
    """Logits of ``rows × tokens`` batches, one agent per row, replayed from a CUDA graph.

    ``logits_to_keep``: positions at the end whose logits are computed (0: all), as the
    model's own argument. ``merged``: the shared levels folded into the base weights, only the
    per-row terms live (in bf16 the merged sum is rounded once, see adapters/merge.py). A call
    returns a fresh tensor (``clone=False``: the graph's output buffer itself, overwritten by the
    next call).
    """

    def __init__(self, core: HiveCore, rows: int, tokens: int, logits_to_keep: int = 1, graph: bool | None = None, merged: bool = False) -> None:
        if rows < 1 or tokens < 1:
            raise ValueError(f"CapturedForward: rows and tokens must be ≥ 1, got rows={rows}, tokens={tokens}")
        self.core, self.rows, self.tokens, self.keep, self.merged = core, rows, tokens, logits_to_keep, merged
        device = core.device
        self.graph = uses_graph("CapturedForward", device, graph)
        self.ids = torch.zeros(rows, tokens, dtype=torch.long, device=device)
        self.mask = torch.ones(rows, tokens, dtype=torch.long, device=device)
        self.slot = torch.zeros(rows, dtype=torch.long, device=device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._out: torch.Tensor | None = None
        self._key: tuple[object, ...] | None = None
        self.captures = 0  # how many times the graph was recorded

    def __call__(self, input_ids: torch.Tensor, agents: Sequence[str], attention_mask: torch.Tensor | None = None, clone: bool = True) -> torch.Tensor:
        if tuple(input_ids.shape) != (self.rows, self.tokens):
            raise ValueError(f"CapturedForward: input_ids must be ({self.rows}, {self.tokens}) as captured, got {tuple(input_ids.shape)}")
        if len(agents) != self.rows:
            raise ValueError(f"CapturedForward: one agent per row ({self.rows}) is needed, got {len(agents)}")
        if attention_mask is not None and tuple(attention_mask.shape) != (self.rows, self.tokens):
            raise ValueError(f"CapturedForward: attention_mask must be ({self.rows}, {self.tokens}), got {tuple(attention_mask.shape)}")
        self.slot.copy_(self.core.index(self.core.agent_index(agents)), non_blocking=True)
        self.ids.copy_(input_ids, non_blocking=True)
        if attention_mask is None:
            self.mask.fill_(1)
        else:
            self.mask.copy_(attention_mask, non_blocking=True)
        if not self.graph:
            return self._forward()
        key = (self._baked(), self._refresh())
        if self._graph is None or key != self._key:
            self._capture()
            self._key = key
        assert self._graph is not None and self._out is not None
        self._graph.replay()
        return self._out.clone() if clone else self._out

    def _routing(self) -> Routing:
        return static_routing(self.core, self.slot)

    def _forward(self) -> torch.Tensor:
        with torch.no_grad(), self.core.routing.merging(self.merged), self.core.routing.use(self._routing()):
            out = self.core.model(input_ids=self.ids, attention_mask=self.mask, logits_to_keep=self.keep, use_cache=False)
        return out.logits

    def _baked(self) -> tuple[object, ...]:
        return baked(self.core)

    def _refresh(self) -> tuple[int, ...]:
        return refresh_kept(self.core, self.slot, self.merged)

    def _capture(self) -> None:
        self._graph, self._out = record(self._forward)
        self.captures += 1


def uses_graph(owner: str, device: torch.device, graph: bool | None) -> bool:
    """Whether to record a CUDA graph: ``graph``, or by default wherever the model is on CUDA."""
    if graph and device.type != "cuda":
        raise ValueError(f"{owner}: graph=True needs the model on a CUDA device, it is on {device}")
    return device.type == "cuda" if graph is None else graph


def static_routing(core: HiveCore, slot: torch.Tensor) -> Routing:
    """Every level runs; every level that is not shared reads each row's slot from the static buffer ``slot``.

    A new object per forward: the fused path keeps gathered weights for the life of a routing.
    """
    slots = {lv.name: slot for lv in core.stack.levels if lv.scope != "shared"}
    return Routing(slots=slots, mix=core.mix, uniform=frozenset(), pooled=True)


def baked(core: HiveCore) -> tuple[object, ...]:
    """What a recorded graph depends on besides its buffers: the banks' storage, the levels, their mixing."""
    ptrs = tuple(t.data_ptr() for lv in core.stack.levels for bank in core.banks(lv.name) for t in (bank.A, bank.B))
    return (tuple(core.stack.names()), tuple(sorted(core.mix.items())), ptrs)


def refresh_kept(core: HiveCore, slot: torch.Tensor, merged: bool) -> tuple[int, ...]:
    """Bring every weight kept between forwards up to date in its own storage; their addresses.

    The merged weights (``merged``) and each module's pooled levels (adapters/fused.py): host
    checks of version counters, a rebuild where a level changed.
    """
    routing, ptrs = static_routing(core, slot), []
    with torch.no_grad():
        for layer in core.layers.values():
            levels = mergeable(layer, routing) if merged else frozenset()
            if levels:
                ptrs.append(merged_weight(layer, routing, levels).data_ptr())
            ptrs.extend(refresh(layer, without(routing, levels) if levels else routing, layer.base.weight.dtype))
    return tuple(ptrs)


def record(fn: Callable[[], T]) -> tuple[torch.cuda.CUDAGraph, T]:
    """``fn`` recorded as a CUDA graph (after two warm-up runs off the capturing stream) and what it returned."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capturing stream (allocator, lazy kernels)
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out
