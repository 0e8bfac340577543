"""Moving small host data to the device without waiting for it.

A plain ``torch.tensor(data, device="cuda")`` or ``.to("cuda")`` from pageable host memory
blocks the host until the GPU's queue has drained: a synchronisation. On the hot path
(routing indices, token batches, slot lists) the data goes through pinned memory with
``non_blocking=True`` instead, so the host keeps queueing work; the caching host allocator
keeps the pinned buffer alive until the copy has run.
"""

from __future__ import annotations

import torch

__all__ = ["to_device"]


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t`` (a CPU tensor) on ``device``, copied asynchronously when that is a GPU."""
    device = torch.device(device)
    if device.type != "cuda" or t.device == device:
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
