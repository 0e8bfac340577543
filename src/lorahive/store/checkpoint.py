"""Checkpoints: safetensors per level + plain JSON state, written atomically, never unpickled.

Layout of ``RUN/checkpoint/``::

    levels/<level>.safetensors   "<module>/A" (S, r, in), "<module>/B" (S, out, r), "<module>/A0" init snapshot
    optim/<level>.safetensors    per-slot AdamW state "<param>:exp_avg|exp_avg_sq|step"
    extra.safetensors            mechanism state (e.g. the swarm's running direction) + torch RNG state
    state.json                   tick, agents, mixing coefficients, reputations, run bookkeeping
    manifest.json                sha256 and size of every file above

A checkpoint is written to a temporary sibling directory, each file fsynced, then renamed over
the old one (the old one is kept as ``checkpoint.prev/`` until the new one is in place). On
load, every file's hash is checked before anything is applied: a truncated or corrupted
checkpoint is refused naming the file, and the hive is left untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lorahive.runtime.hive import Hive

NAME, PREV = "checkpoint", "checkpoint.prev"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file."""


@dataclass(frozen=True)
class Loaded:
    state: dict[str, Any]
    extra: dict[str, torch.Tensor]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True), encoding="utf-8")


def _hive_tensors(hive: Hive) -> dict[str, dict[str, torch.Tensor]]:
    files: dict[str, dict[str, torch.Tensor]] = {}
    for lv in hive.levels:
        files[f"levels/{lv.name}.safetensors"] = {
            f"{path}/{k}": t.detach().cpu().contiguous()
            for path, bank in hive.named_banks(lv.name)
            for k, t in (("A", bank.A), ("B", bank.B), ("A0", bank.A0))
        }
        opt = hive.optimizers[lv.name].state_dict()
        if opt:
            files[f"optim/{lv.name}.safetensors"] = {k: v.detach().cpu().contiguous() for k, v in opt.items()}
    return files


def save(run_dir: str | Path, hive: Hive, state: dict[str, Any], extra: dict[str, torch.Tensor]) -> Path:
    """Write ``RUN/checkpoint`` atomically; returns its path."""
    run = Path(run_dir)
    tmp = run / f".{NAME}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "levels").mkdir(parents=True)
    (tmp / "optim").mkdir()
    files = _hive_tensors(hive)
    files["extra.safetensors"] = {**{k: v.detach().cpu().contiguous() for k, v in extra.items()}, "rng/torch": torch.get_rng_state()}
    for rel, tensors in files.items():
        save_file(tensors, str(tmp / rel))
    full_state = {**state, "agents": hive.agents, "mix": hive.mix}
    _write_json(tmp / "state.json", full_state)
    manifest = {rel: {"sha256": _sha256(tmp / rel), "bytes": (tmp / rel).stat().st_size} for rel in [*files, "state.json"]}
    _write_json(tmp / "manifest.json", manifest)
    for rel in [*files, "state.json", "manifest.json"]:
        with (tmp / rel).open("rb") as f:
            os.fsync(f.fileno())
    for d in (tmp / "levels", tmp / "optim", tmp):
        _fsync_dir(d)
    final, prev = run / NAME, run / PREV
    if final.exists():
        if prev.exists():
            shutil.rmtree(prev)
        os.replace(final, prev)
    os.replace(tmp, final)
    _fsync_dir(run)
    if prev.exists():
        shutil.rmtree(prev)
    return final


def locate(run_dir: str | Path) -> Path:
    """The checkpoint to resume from: ``checkpoint/``, or ``checkpoint.prev/`` after a crash mid-swap."""
    run = Path(run_dir)
    for name in (NAME, PREV):
        if (run / name / "manifest.json").is_file():
            return run / name
    raise CheckpointError(f"{run}: no checkpoint found (expected {run / NAME}/manifest.json)")


def _verify(ckpt: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((ckpt / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{ckpt / 'manifest.json'}: unreadable: {e}") from None
    if not isinstance(manifest, dict) or "state.json" not in manifest:
        raise CheckpointError(f"{ckpt / 'manifest.json'}: not a lorahive checkpoint manifest")
    for rel, meta in manifest.items():
        path = ckpt / rel
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        if path.stat().st_size != meta.get("bytes") or _sha256(path) != meta.get("sha256"):
            raise CheckpointError(f"{path}: corrupted or truncated (size or sha256 differs from the manifest)")
    return manifest


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors file: {e}") from None


def _check_banks(hive: Hive, ckpt: Path, manifest: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """Load and shape-check every level file before anything is written into the hive."""
    levels: dict[str, dict[str, torch.Tensor]] = {}
    for lv in hive.levels:
        rel = f"levels/{lv.name}.safetensors"
        if rel not in manifest:
            raise CheckpointError(f"{ckpt / rel}: missing (the hive has level {lv.name!r})")
        tensors = _load_tensors(ckpt / rel)
        for path, bank in hive.named_banks(lv.name):
            for k, ref in (("A", bank.A), ("B", bank.B)):
                t = tensors.get(f"{path}/{k}")
                if t is None or t.shape[1:] != ref.shape[1:] or t.shape[0] < ref.shape[0] or t.dtype != ref.dtype:
                    raise CheckpointError(f"{ckpt / rel}: {path}/{k} is missing or has the wrong shape/dtype")
                if not torch.isfinite(t).all():
                    raise CheckpointError(f"{ckpt / rel}: {path}/{k} holds NaN or inf")
        levels[lv.name] = tensors
    return levels


def load(run_dir: str | Path, hive: Hive) -> Loaded:
    """Verify the checkpoint, then restore levels, optimizer state, agents and mix into ``hive``."""
    ckpt = locate(run_dir)
    manifest = _verify(ckpt)
    state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    agents = state.get("agents")
    if not isinstance(agents, list) or agents[: len(hive.agents)] != hive.agents:
        raise CheckpointError(f"{ckpt / 'state.json'}: its agents do not extend this hive's agents")
    levels = _check_banks(hive, ckpt, manifest)
    optim = {lv.name: _load_tensors(ckpt / f"optim/{lv.name}.safetensors") for lv in hive.levels if f"optim/{lv.name}.safetensors" in manifest}
    extra = _load_tensors(ckpt / "extra.safetensors")
    hive.add_agents(agents[len(hive.agents) :])
    with torch.no_grad():
        for name, tensors in levels.items():
            for path, bank in hive.named_banks(name):
                n = tensors[f"{path}/A"].shape[0]
                bank.grow(n)
                bank.A.copy_(tensors[f"{path}/A"])
                bank.B.copy_(tensors[f"{path}/B"])
                bank.A0.copy_(tensors[f"{path}/A0"])
    for name, flat in optim.items():
        hive.optimizers[name].load_state_dict(flat)
    hive.mix.update({k: float(v) for k, v in state.get("mix", {}).items()})
    if "rng/torch" in extra:
        torch.set_rng_state(extra.pop("rng/torch"))
    return Loaded(state, extra)
