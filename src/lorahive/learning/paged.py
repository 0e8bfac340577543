"""AdamW moments kept on the host, one row per slot that ever trained (``SlotAdamW(host=True)``).

A fleet's per-agent levels hold two float32 moments per parameter, twice the weights
themselves; most slots sit idle between their agents' steps. Here the moments of one level
live in host memory (pinned when the parameters are on CUDA, so the copies to and from the
device run at full speed), and only the rows of slots that trained at least once exist: a
row is allocated, zero, the first time its slot steps, and the store grows by doubling. A
step gathers its slots' rows to the device, runs the same fused AdamW kernel on them, and
writes them back (:class:`~lorahive.learning.optim.SlotAdamW`).

``dtype`` stores the rows in another dtype than the parameters' (bfloat16: half the host
bytes): a gather casts them up to the parameters' dtype for the kernel, a scatter rounds them
back (to nearest), so every step rounds the moments once and the update is no longer the
resident one bit for bit. What the store hands out (:meth:`slot_rows`) is in the parameters'
dtype, so checkpoints and slot transfers look the same either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["HostMoments"]

FIRST_ROWS = 64  # rows allocated the first time a level steps; the store doubles from there


class HostMoments:
    """``exp_avg`` and ``exp_avg_sq`` of one level's parameters, by slot, on the host.

    ``rows`` maps a slot to its row in every parameter's store (the parameters of a level
    step together, so they share it); a slot without a row has zero moments.
    """

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        self.dtype = dtype  # the rows' dtype; None: the parameters'
        self.rows: dict[int, int] = {}
        self.capacity = 0
        self.stores: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (exp_avg, exp_avg_sq), (capacity, *shape)
        self.shapes: dict[str, tuple[tuple[int, ...], torch.dtype, bool]] = {}  # name -> (per-slot shape, dtype, pinned)

    def add(self, name: str, shape: Sequence[int], dtype: torch.dtype, pin: bool) -> None:
        """Hold moments for parameter ``name`` (slot-first, per-slot ``shape``), if not held yet."""
        if name in self.stores:
            return
        self.shapes[name] = (tuple(shape), dtype, pin and torch.cuda.is_available())
        self.stores[name] = (self._zeros(name, self.capacity), self._zeros(name, self.capacity))

    def _zeros(self, name: str, n: int) -> torch.Tensor:
        shape, dtype, pin = self.shapes[name]
        return torch.zeros(n, *shape, dtype=self.dtype or dtype, pin_memory=pin)

    def index(self, slots: Sequence[int]) -> torch.Tensor:
        """The rows of ``slots`` as a CPU long tensor, allocating (zero) rows for slots that have none."""
        new = [s for s in dict.fromkeys(slots) if s not in self.rows]
        if len(self.rows) + len(new) > self.capacity:
            self._grow(len(self.rows) + len(new))
        for s in new:
            self.rows[s] = len(self.rows)
        return torch.tensor([self.rows[s] for s in slots], dtype=torch.long)

    def _grow(self, need: int) -> None:
        cap = max(FIRST_ROWS, self.capacity)
        while cap < need:
            cap *= 2
        for name, (m, v) in self.stores.items():
            grown = []
            for t in (m, v):
                g = self._zeros(name, cap)
                g[: t.shape[0]] = t
                grown.append(g)
            self.stores[name] = (grown[0], grown[1])
        self.capacity = cap

    def gather(self, name: str, rows: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The moments at ``rows`` as contiguous copies on ``device``, in the parameters' dtype."""
        m, v = self.stores[name]
        dtype = self.shapes[name][1]
        return m.index_select(0, rows).to(device).to(dtype), v.index_select(0, rows).to(device).to(dtype)

    def scatter(self, name: str, rows: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> None:
        """Write moments (from :meth:`gather`, updated) back at ``rows``."""
        store_m, store_v = self.stores[name]
        store_m.index_copy_(0, rows, m.to(store_m.dtype).to("cpu"))
        store_v.index_copy_(0, rows, v.to(store_v.dtype).to("cpu"))

    def zero(self, slots: Sequence[int]) -> None:
        """Clear the moments of ``slots`` (their rows stay allocated)."""
        held = [self.rows[s] for s in slots if s in self.rows]
        if not held:
            return
        idx = torch.tensor(held, dtype=torch.long)
        for m, v in self.stores.values():
            m.index_fill_(0, idx, 0)
            v.index_fill_(0, idx, 0)

    def slot_rows(self, name: str, key: str, slots: Sequence[int]) -> torch.Tensor:
        """Moment ``key`` (``exp_avg`` or ``exp_avg_sq``) of ``slots``, row ``i`` for ``slots[i]``, on the CPU (zero where no row)."""
        store = self.stores[name][0 if key == "exp_avg" else 1]
        out = torch.zeros(len(slots), *self.shapes[name][0], dtype=self.shapes[name][1])
        pos = [i for i, s in enumerate(slots) if s in self.rows]
        if pos:
            out[pos] = store.index_select(0, torch.tensor([self.rows[slots[i]] for i in pos], dtype=torch.long)).to(out.dtype)
        return out

    def nbytes(self) -> int:
        """Host bytes held by the stores (allocated rows, used or not)."""
        return sum(t.numel() * t.element_size() for pair in self.stores.values() for t in pair)
