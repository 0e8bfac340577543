"""Validated configuration of where the adapter slots' memory lives (issue [5/10] item 4, "Memory").

Per parameter of a per-agent level, a fleet holds today: the factor (4 bytes, float32), the
init snapshot of ``A`` (4 bytes for the part that is ``A``) and two AdamW moments (8 bytes).
The options here take the last two off the accelerator, each at a stated cost.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MemorySpec"]


class MemorySpec(BaseModel):
    """Where the banks' init snapshots and the optimizer moments are kept."""

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
