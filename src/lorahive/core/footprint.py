"""What the per-agent slots of a core hold, in bytes, read from the tensors actually allocated.

A fleet's memory grows with its per-agent and per-task levels (shared levels hold one slot
whatever the fleet's size). Per slot they hold the factors ``A`` and ``B``, the stored init
snapshot ``A0`` (none when it is regenerated, :class:`~lorahive.config.MemorySpec`), the AdamW
moments (on the device, or rows on the host) and, during a learn step, the gradient of each
trained bank: shaped like the bank (adapters/fused_train.py), or, under ``slot_grads``, rows for
the step's slots only, held twice at the optimizer step (the sparse rows and the compact copy
learning/step_grads.py cuts). The figure is what the capacity benchmark
(benchmarks/gpu/capacity.py) checks without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorahive.core.model import HiveCore

__all__ = ["Footprint", "footprint"]


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


@dataclass(frozen=True)
class Footprint:
    """Bytes held by the per-agent and per-task levels of one core, by kind and place."""

    slots: int  # slots per per-agent bank (its capacity: agents rounded up to the doubling)
    weights: int  # A and B, on the banks' device
    init: int  # stored A0, on the banks' device
    moments_device: int  # AdamW moments and step counts kept on the device
    moments_host: int  # AdamW moment rows kept on the host
    gradient: int  # the gradient of every trained factor at a learn step's peak (whole banks, or the step's slots' rows twice)

    @property
    def device(self) -> int:
        """Resident on the banks' device between steps."""
        return self.weights + self.init + self.moments_device

    @property
    def device_peak(self) -> int:
        """On the device during a learn step: the resident bytes and the banks' gradients."""
        return self.device + self.gradient

    def per_slot(self) -> dict[str, float]:
        """Every figure divided by the slots: bytes per agent."""
        n = max(1, self.slots)
        return {
            "weights": self.weights / n, "init": self.init / n, "moments_device": self.moments_device / n,
            "moments_host": self.moments_host / n, "gradient": self.gradient / n, "device": self.device / n, "device_peak": self.device_peak / n,
        }  # fmt: skip


def footprint(core: HiveCore, step_slots: int | None = None) -> Footprint:
    """The :class:`Footprint` of ``core``'s per-agent and per-task levels now.

    ``step_slots``: the slots one learn step trains (default every slot), which sizes the
    gradient under ``MemorySpec.slot_grads``; without it the gradient is the whole banks'.
    """
    weights = init = grad = moments_device = moments_host = 0
    slots = 0
    for lv in core.levels:
        if lv.scope == "shared":
            continue
        slots = max(slots, core.n_slots(lv.name))
        for bank in core.banks(lv.name):
            weights += _nbytes(bank.A) + _nbytes(bank.B)
            init += _nbytes(bank.A0) if bank.store_init else 0
            if lv.trainable:
                whole = _nbytes(bank.A) + _nbytes(bank.B)
                trained = bank.n_slots if step_slots is None else min(step_slots, bank.n_slots)
                grad += 2 * whole * trained // bank.n_slots if bank.slot_grads and bank.n_slots > 1 else whole
        held = core.optimizers[lv.name].nbytes()
        moments_device += held["device"]
        moments_host += held["host"]
    return Footprint(slots, weights, init, moments_device, moments_host, grad)
