"""Validated configuration of where the adapter slots' memory lives (issue [5/10] item 4, "Memory").

Per parameter of a per-agent level, a fleet holds today: the factor (4 bytes, float32), the
init snapshot of ``A`` (4 bytes for the part that is ``A``) and two AdamW moments (8 bytes).
The options here take the last two off the accelerator, each at a stated cost, and confine a
learn step's gradient (4 bytes, held during the step) to the slots the step trains.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["MemorySpec"]


class MemorySpec(BaseModel):
    """Where the banks' init snapshots, the optimizer moments and a learn step's gradients are kept."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store_init: bool = Field(
        strict=True,
        default=True,
        description="keep every bank's init snapshot A0 beside A (true), or regenerate the rows a primitive needs from the "
        "bank's seed on the CPU (false: saves 4 bytes per A parameter; decay toward init then draws every decayed slot's "
        "init each tick, guarded by a crc32 per init chunk)",
    )
    host_moments: bool = Field(
        strict=True,
        default=False,
        description="keep the AdamW moments of per-agent and per-task levels on the host (pinned when on CUDA), rows "
        "allocated for slots the first time they train, and bring a step's slots to the device for that step only; "
        "shared levels keep theirs on the device (one slot)",
    )
    host_moments_dtype: Literal["float32", "bfloat16"] = Field(
        default="float32",
        description="dtype of the host moment rows (host_moments only): bfloat16 halves the host bytes (at 4,096 trained "
        "agents of Qwen2.5-0.5B, 108 GB instead of 216 GB); the kernel still runs in float32, but every step rounds the "
        "moments back to bfloat16 (to nearest), so the update is no longer the float32 one bit for bit",
    )
    slot_grads: bool = Field(
        strict=True,
        default=False,
        description="give a bank with more than one slot a row-sparse gradient (sparse COO, rows only for the slots the "
        "step's rows used, as nn.Embedding(sparse=True) does) instead of a bank-sized one; the optimizer compacts it to "
        "the step's slots, so the update is the dense path's bit for bit on the CPU. The step then holds its slots' "
        "gradient twice (the sparse rows and their compact copy) and no whole-bank one: it pays off when a step trains "
        "fewer than half the slots. Applies on the fused path (the default on CUDA and the CPU); a torch optimizer "
        "over the banks would not accept these gradients",
    )

    @model_validator(mode="after")
    def _dtype_needs_host_moments(self) -> MemorySpec:
        if self.host_moments_dtype != "float32" and not self.host_moments:
            raise ValueError("host_moments_dtype: only the host's moment rows can be kept in bfloat16; set host_moments: true")
        return self
