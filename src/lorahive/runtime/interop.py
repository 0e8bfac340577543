"""A run directory's hive as a PEFT adapter, and a PEFT adapter into a run directory.

What ``lorahive export`` and ``lorahive import-peft`` call. Both rebuild the hive the way
:func:`lorahive.runtime.run.resume` does (config.yaml → base model + level stack → verified
checkpoint), on the CPU, so an export reads exactly the weights a resume would continue from.
An import writes a new checkpoint (atomically, through :func:`lorahive.store.checkpoint.save`)
holding everything the old one held, with the one slot replaced, and records it in the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lorahive.config import load_config
from lorahive.core import persistent_levels
from lorahive.observe.ledger import Ledger, sha256_of
from lorahive.runtime.hive import Hive
from lorahive.runtime.rundir import is_stages_run
from lorahive.store import checkpoint
from lorahive.store.lock import run_lock
from lorahive.store.peft import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    ImportReport,
    export_peft,
    import_peft,
)

__all__ = ["Restored", "export_run", "import_into_run", "parse_levels", "restore_hive"]


@dataclass(frozen=True)
class Restored:
    """A hive rebuilt from a run directory, with what its checkpoint held beside the weights."""

    hive: Hive
    loaded: checkpoint.Loaded


def restore_hive(run_dir: str | Path) -> Restored:
    """Rebuild the hive of ``run_dir`` from its config and last good checkpoint (CPU, fp32)."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise ValueError(f"{run} holds no run (no config.yaml)")
    if is_stages_run(run):
        raise ValueError(f"{run} is a stages run: it has no agents to export or import into; its weights are {run / 'stages.safetensors'} (docs/stages.md)")
    cfg = load_config(run / "config.yaml")
    checkpoint.locate(run)  # fail before loading the model when there is no checkpoint
    hive = Hive.load(cfg.base, cfg.stack(), device="cpu", seed=cfg.seed)
    from lorahive.runtime.run import state_validator

    return Restored(hive, checkpoint.load(run, hive.core, state_validator(cfg, cfg.task_types())))


def parse_levels(text: str | None, hive: Hive) -> list[str]:
    """``"a,b"`` → ``["a", "b"]``, every name checked; None → the levels that outlive a task.

    The task-scoped (context) level is left out by default: its slot holds whatever the
    agent's last task left there, which is not part of the agent's lasting view.
    """
    if text is None:
        return persistent_levels(hive.stack)
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError(f"--levels {text!r} names no level; levels are {hive.stack.names()}")
    unknown = [n for n in names if n not in hive.stack.names()]
    if unknown:
        raise ValueError(f"unknown levels: {', '.join(unknown)}; levels are {hive.stack.names()}")
    return names


def _check_agent(hive: Hive, agent: str) -> None:
    if agent not in hive.agents:
        raise ValueError(f"unknown agent {agent!r}; agents are {hive.agents}")


def check_export_target(run_dir: str | Path, out: str | Path, force: bool = False) -> None:
    """Refuse an export into the run's own checkpoint folders, or over an adapter without ``force``."""
    run, target = Path(run_dir).resolve(), Path(out).resolve()
    for name in (checkpoint.NAME, checkpoint.PREV, f".{checkpoint.NAME}.tmp"):
        inside = run / name
        if target == inside or inside in target.parents:
            raise ValueError(f"--out {out} is inside the run's {name}/; export to a folder of its own")
    if target == run:
        raise ValueError(f"--out {out} is the run directory itself; export to a folder of its own")
    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    present = [n for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if (Path(out) / n).exists()]
    if present and not force:
        raise ValueError(f"--out {out} already holds an adapter ({', '.join(present)}); use --force to overwrite it")


def export_run(run_dir: str | Path, agent: str, out: str | Path, levels: str | None = None, force: bool = False) -> Path:
    """Write ``agent``'s view of the run's checkpointed hive as a PEFT LoRA directory ``out``."""
    check_export_target(run_dir, out, force)
    restored = restore_hive(run_dir)
    hive = restored.hive
    _check_agent(hive, agent)
    return export_peft(hive.core, agent, out, parse_levels(levels, hive))


def import_into_run(run_dir: str | Path, adapter_dir: str | Path, level: str, agent: str | None = None) -> ImportReport:
    """Put a PEFT adapter into one slot of ``level`` of the run's hive and checkpoint the result.

    The adapter is read and checked in full before anything is written; the run's checkpoint
    is replaced atomically, so a failure at any point leaves the old one in place.
    """
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise ValueError(f"{run} holds no run (no config.yaml)")
    with run_lock(run):
        return _import_locked(run, adapter_dir, level, agent)


def _import_locked(run: Path, adapter_dir: str | Path, level: str, agent: str | None) -> ImportReport:
    restored = restore_hive(run)
    hive, loaded = restored.hive, restored.loaded
    if level not in hive.stack.names():
        raise ValueError(f"unknown level {level!r}; levels are {hive.stack.names()}")
    if agent is not None:
        _check_agent(hive, agent)
    rng = torch.get_rng_state()  # the checkpoint's RNG state, restored by load
    report = import_peft(hive.core, adapter_dir, level, agent)
    torch.set_rng_state(rng)
    path = checkpoint.save(run, hive.core, loaded.state, loaded.extra)
    tick = int(loaded.state.get("tick", 0))
    with Ledger(run / "ledger.sqlite") as ledger:
        ledger.record_event(tick, "import_peft", {"adapter": str(adapter_dir), "level": level, "agent": agent, "max_error": report.max_error})
        ledger.record_checkpoint(tick, path, sha256_of(path / "manifest.json"))
    return report
