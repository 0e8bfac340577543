"""Resumable sequential implants: each method's state saved every ``save_every`` edits, continued exactly.

A 1,000-edit run takes longer than a GPU is lent at a time; what it needs to go on is small:
the hive's level slots with their optimizer state (the lora baseline's AdamW moments carry
over from edit to edit), how many edits are done, the checkpoints scored so far, the writer's
own record (steps per edit; for ``protect: nullspace`` its preserved basis, built once on the
unedited hive) and the seconds spent. It goes to ``OUT/state/METHOD/`` (``state.json`` and
``levels.safetensors``, each written atomically, the JSON last, so a state is whole or the
previous one). Everything else is rebuilt as the first start built it: the base model, the
generated contexts and the probe before editing (greedy and seeded), the replay and
neighbour draws (seeded by the edit's place). ``lorahive implant --resume --out OUT`` refuses
a config that differs from the saved one, naming the fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lorahive.config import ConfigError
from lorahive.config.implant import ImplantConfig
from lorahive.implant.edits import Scores
from lorahive.implant.protect import NullSpace, NullSpaceWriter
from lorahive.runtime.hive import Hive
from lorahive.store.files import atomic_write_json, fsync_file, move_into_place

__all__ = ["Saved", "load_state", "restore", "save_state", "state_dir", "writer_parts"]

#: Config fields that may differ between a run and its resumption (they do not change what is computed).
FREE = {"threads", "save_every", "methods"}


def state_dir(out: Path, method: str) -> Path:
    return out / "state" / method


@dataclass
class Saved:
    """A method's state after ``done`` edits."""

    done: int
    seconds: float
    checkpoints: list[Scores]
    parameters: list[int]
    truncation: float
    steps_taken: list[int]
    kept: list[float]
    tensors: dict[str, torch.Tensor]


def writer_parts(writer: Any) -> tuple[Any, NullSpaceWriter | None]:
    """The writer inside a null-space guard, and the guard (``None`` without one)."""
    return (writer.inner, writer) if isinstance(writer, NullSpaceWriter) else (writer, None)


def save_state(out: Path, method: str, cfg: ImplantConfig, hive: Hive, done: int, seconds: float, result: Any, writer: Any) -> None:
    """Write ``method``'s state after ``done`` edits (tensors first, then the JSON that names them)."""
    folder = state_dir(out, method)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"level/{lv.name}/{k}": v.contiguous() for lv in hive.levels for k, v in hive.core.slot_rows(lv.name, range(hive.core.n_slots(lv.name))).items()}
    plain, guard = writer_parts(writer)
    if guard is not None and guard.space is not None:
        tensors |= {f"space/general/{p}": u.detach().cpu().contiguous() for p, u in guard.space.general.items()}
        tensors |= {f"space/edit/{p}": torch.stack(ks).detach().cpu().contiguous() for p, ks in guard.space.edit_keys.items() if ks}
    tmp = folder / "levels.safetensors.tmp"
    save_file(tensors, str(tmp))
    fsync_file(tmp)
    move_into_place(tmp, folder / "levels.safetensors")
    doc = {
        "config": cfg.model_dump(mode="json"), "method": method, "done": done, "seconds": seconds,
        "checkpoints": [s.model_dump() for s in result.checkpoints], "parameters": result.parameters, "truncation": result.truncation,
        "steps_taken": list(getattr(plain, "steps_taken", [])), "kept": list(guard.kept) if guard is not None else [],
    }  # fmt: skip
    atomic_write_json(folder / "state.json", doc)


def load_state(out: Path, method: str, cfg: ImplantConfig) -> Saved | None:
    """``method``'s saved state under ``out`` (``None``: none saved); a config that differs from the saved one is refused."""
    folder = state_dir(out, method)
    if not (folder / "state.json").is_file():
        return None
    doc = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    now = cfg.model_dump(mode="json")
    differ = sorted(k for k in set(now) | set(doc["config"]) if k not in FREE and now.get(k) != doc["config"].get(k))
    if differ:
        raise ConfigError(f"--resume: the config differs from the saved run's in {', '.join(differ)}; resume with the same settings or start a new --out")
    return Saved(
        int(doc["done"]), float(doc["seconds"]), [Scores(**s) for s in doc["checkpoints"]], [int(p) for p in doc["parameters"]], float(doc["truncation"]),
        [int(s) for s in doc["steps_taken"]], [float(k) for k in doc["kept"]], load_file(str(folder / "levels.safetensors")),
    )  # fmt: skip


def restore(saved: Saved, hive: Hive, writer: Any, edits: list[Any]) -> None:
    """Put ``saved`` back into a freshly built ``hive`` and ``writer`` (the result's fields are the caller's)."""
    for lv in hive.levels:
        prefix = f"level/{lv.name}/"
        rows = {k.removeprefix(prefix): v for k, v in saved.tensors.items() if k.startswith(prefix)}
        hive.core.load_slot_rows(lv.name, list(range(hive.core.n_slots(lv.name))), rows)
    plain, guard = writer_parts(writer)
    if hasattr(plain, "steps_taken"):
        plain.steps_taken[:] = saved.steps_taken
        plain.written[:] = edits[: saved.done]
    if guard is not None:
        guard.kept[:] = saved.kept
        general = {k.removeprefix("space/general/"): v.to(hive.device) for k, v in saved.tensors.items() if k.startswith("space/general/")}
        if general:
            keys = {k.removeprefix("space/edit/"): list(v.to(hive.device).unbind(0)) for k, v in saved.tensors.items() if k.startswith("space/edit/")}
            guard.space = NullSpace(guard.null_energy, general, keys)
            guard.space.rebuild()
