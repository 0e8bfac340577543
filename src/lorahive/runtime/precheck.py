"""What a run's config and machine can be checked for before the first byte is written.

:func:`precheck` needs no model (paths, thread counts); :func:`check_data` and
:func:`check_memory` run once the data and the base model are loaded. Each raises
:class:`~lorahive.config.ConfigError` naming the field, so the CLI refuses with exit code 2.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lorahive.config import ConfigError, RunConfig
from lorahive.runtime.hive import Hive
from lorahive.suites.cl import CLData

__all__ = ["available_memory", "check_data", "check_memory", "precheck", "slot_bytes"]

THREADS_PER_CPU = 4


def precheck(cfg: RunConfig) -> None:
    """Everything about ``cfg`` that can be checked without loading the model; writes nothing."""
    if not cfg.base.startswith("embedded:") and not Path(cfg.base).is_dir():
        raise ConfigError(f"base: no model directory at {cfg.base} (pass embedded:NAME or a local Hugging Face model directory)")
    cpus = os.cpu_count() or 1
    if cfg.threads is not None and cfg.threads > THREADS_PER_CPU * cpus:
        raise ConfigError(f"threads: {cfg.threads} is more than {THREADS_PER_CPU} × the {cpus} CPU cores of this machine")
    if cfg.suite.source == "cl":
        assert cfg.suite.root is not None
        if not Path(cfg.suite.root).is_dir():
            raise ConfigError(f"suite.root: no folder at {cfg.suite.root}")


def use_deterministic_algorithms() -> None:
    """Make this process's torch computations repeatable (``deterministic: true``).

    Without it a GPU run's backward adds in whatever order its atomic operations land, so the
    same config and seed differ run to run (one seed of the standard stream moved ACC by
    ±0.008, docs/mechanisms.md). cuBLAS needs a fixed workspace for this, set before its
    first use; operations with no deterministic kernel run as they are, with torch's warning.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def check_data(cfg: RunConfig, data: dict[str, CLData]) -> None:
    s = cfg.suite
    for t, d in data.items():
        if s.support > len(d.train) or s.query > len(d.test):
            raise ConfigError(f"suite.support / suite.query: {t} has {len(d.train)} train / {len(d.test)} test examples; asked for {s.support} / {s.query}")


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device`` (None when unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def slot_bytes(hive: Hive, n_agents: int) -> int:
    """Rough device bytes of the per-agent slots ``n_agents`` agents need: A, B, a learn step's gradient of them,
    and, unless the core's ``MemorySpec`` keeps them elsewhere, A0 and two AdamW moments."""
    memory = hive.core.memory
    total = 0
    for lv in hive.levels:
        if lv.scope == "shared":
            continue
        for _, bank in hive.core.named_banks(lv.name):
            a, b = bank.A[0].numel(), bank.B[0].numel()
            copies = 1 + (2 if memory.slot_grads else 1) + (0 if memory.host_moments else 2)  # factor, gradient (rows held twice under slot_grads: a step of every agent), moments
            total += n_agents * ((a + b) * copies + (a if memory.store_init else 0)) * bank.A.element_size()
    return total


def check_memory(hive: Hive, cfg: RunConfig) -> None:
    need = slot_bytes(hive, cfg.agents)
    free = available_memory(next(hive.core.model.parameters()).device)
    if free is not None and need > free // 2:
        raise ConfigError(f"agents: {cfg.agents} agents need about {need / 2**30:.1f} GiB for their adapter slots; {free / 2**30:.1f} GiB is free (at most half is used)")
