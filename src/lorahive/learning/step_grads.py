"""A step's gradients as :class:`~lorahive.learning.optim.SlotAdamW` cuts them: slot-shaped, or compacted from sparse rows.

Under ``MemorySpec.slot_grads`` a multi-slot bank's gradient is sparse COO over the slots its
rows used (adapters/slot_rows.py); passes of ``rows_per_pass`` leave their rows concatenated.
:class:`StepGrads` turns such a gradient into a dense one over the step's slots, row ``i`` for
``used[i]``: duplicates added up, a used slot without rows zero (an agent whose rows were all
pinned elsewhere: the dense gradient is zero there too), rows of slots outside the step dropped.
Every piece the optimizer cuts (a run of slots, or a step count's gathered slots) is then the
same rows, the same size, as the piece it cuts from a slot-shaped gradient, so the fused AdamW
kernel computes the same update bit for bit. Nothing is read back from the device; on the CPU,
where reading the indices costs nothing, a gradient whose rows are the step's slots in order (one
pass over the step's agents) is taken as it is, without the copy.
"""

from __future__ import annotations

import torch

from lorahive.tensors import to_device

__all__ = ["StepGrads"]


class StepGrads:
    """Where each of a step's slots (``used``, sorted, unique) sits in the compacted gradients of that step."""

    def __init__(self, used: list[int]) -> None:
        self.used = used
        self.at = {s: i for i, s in enumerate(used)}
        self.index = torch.tensor(used, dtype=torch.long)  # (n,) on the host
        self._tables: dict[tuple[int, torch.device], torch.Tensor] = {}

    def table(self, n: int, device: torch.device) -> torch.Tensor:
        """``(n,)`` long on ``device``: slot -> its row among the step's slots, ``len(used)`` for a slot outside the step."""
        key = (n, device)
        if key not in self._tables:
            rows = [len(self.used)] * n
            for i, s in enumerate(self.used):
                if s < n:
                    rows[s] = i
            self._tables[key] = to_device(torch.tensor(rows, dtype=torch.long), device)
        return self._tables[key]

    def of(self, grad: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """``grad`` as the step cuts it, and whether it is compacted: a slot-shaped one as it is (contiguous), a sparse one dense over the step's slots."""
        if not grad.is_sparse:
            return (grad if grad.is_contiguous() else grad.contiguous()), False
        n = len(self.used)
        if grad.device.type == "cpu" and grad._nnz() == n and torch.equal(grad._indices()[0], self.index):
            return grad._values(), True  # already the step's slots, in order
        out = torch.zeros(n + 1, *grad.shape[1:], dtype=grad.dtype, device=grad.device)  # (n + 1, …): the last row takes slots outside the step
        index, values = grad._indices()[0], grad._values()
        out.index_add_(0, self.table(grad.shape[0], grad.device).index_select(0, index), values)
        return out[:n], True

    def run(self, g: torch.Tensor, compacted: bool, start: int, stop: int, whole: bool) -> torch.Tensor:
        """The gradient of slots ``[start, stop)`` (a run of the step's slots): the whole of ``g`` when the run is every slot."""
        if whole:
            return g
        first = self.at[start] if compacted else start
        return g[first : first + stop - start]

    def gather(self, g: torch.Tensor, compacted: bool, index: torch.Tensor) -> torch.Tensor:
        """The gradient of the slots in ``index`` (a device long tensor of the step's slots), as a contiguous copy."""
        if compacted:
            index = self.table(max(self.used) + 1, index.device).index_select(0, index)
        return g.index_select(0, index)
