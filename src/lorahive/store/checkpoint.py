"""Checkpoints: safetensors per level + plain JSON state, written atomically, never unpickled.

Layout of ``RUN/checkpoint/``::

    levels/<level>.safetensors   "<module>/A" (S, r, in), "<module>/B" (S, out, r), "<module>/A0" init snapshot
                                 — or, for banks that regenerate it (MemorySpec.store_init false),
                                 "<module>/A0_chunks" (k, 2) int64: each init chunk's first slot and
                                 the crc32 of its init, checked against a regeneration on load
    optim/<level>.safetensors    per-slot AdamW state "<param>:exp_avg|exp_avg_sq|step"
    extra.safetensors            mechanisms' tensors "mechanism/<name>/<key>" (e.g. the aggregator's
                                 running direction) + torch RNG state "rng/torch"
    state.json                   tick, agents, the level stack ("stack": its level specs and which
                                 level each grown level descends from — topology changes it while a
                                 run goes on), mixing coefficients, reputations, mechanisms' plain
                                 state ("mechanisms": {name: {...}}), run bookkeeping
    manifest.json                sha256 and size of every file above

A checkpoint is written to a temporary sibling directory, each file fsynced, then renamed over
the old one (the old one is kept as ``checkpoint.prev/`` until the new one is in place). On
load, every file's hash is checked before anything is applied: a truncated or corrupted
checkpoint is refused naming the file, and the core is left untouched.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from lorahive.adapters.bank import LevelBank, check_chunks
from lorahive.config import StackSpec
from lorahive.core import HiveCore, LevelState, LevelStateError
from lorahive.store.files import (
    TooLarge,
    fsync_dir,
    fsync_file,
    move_into_place,
    read_bounded,
    sha256_file,
)

NAME, PREV = "checkpoint", "checkpoint.prev"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file."""


@dataclass(frozen=True)
class Loaded:
    state: dict[str, Any]
    extra: dict[str, torch.Tensor]


_sha256 = sha256_file  # the one SHA-256 of a file (lorahive.store.files)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True), encoding="utf-8")


def _hive_tensors(core: HiveCore) -> dict[str, dict[str, torch.Tensor]]:
    files: dict[str, dict[str, torch.Tensor]] = {}
    for lv in core.levels:
        files[f"levels/{lv.name}.safetensors"] = {
            f"{path}/{k}": t.detach().cpu().contiguous()
            for path, bank in core.named_banks(lv.name)
            for k, t in (("A", bank.A), ("B", bank.B), _init_entry(bank))
        }
        opt = core.optimizers[lv.name].state_dict()
        if opt:
            files[f"optim/{lv.name}.safetensors"] = {k: v.detach().cpu().contiguous() for k, v in opt.items()}
    return files


def _init_entry(bank: LevelBank) -> tuple[str, torch.Tensor]:
    """A bank's init as checkpointed: the stored snapshot, or the chunk table it regenerates from."""
    if bank.store_init:
        return "A0", bank.A0
    return "A0_chunks", torch.tensor(bank.chunks, dtype=torch.long)


def _chunk_table(t: torch.Tensor) -> list[tuple[int, int]]:
    """A checkpointed ``A0_chunks`` tensor as the bank's table: (first slot, crc32) per chunk."""
    return [(int(a), int(c)) for a, c in t.tolist()]


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Write one safetensors file, fsync it, and return its sha256 (one worker of :func:`save`)."""
    save_file(tensors, str(path))
    fsync_file(path)
    return _sha256(path)


def save(run_dir: str | Path, core: HiveCore, state: dict[str, Any], extra: dict[str, torch.Tensor]) -> Path:
    """Write ``RUN/checkpoint`` atomically; returns its path."""
    run = Path(run_dir)
    tmp = run / f".{NAME}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "levels").mkdir(parents=True)
    (tmp / "optim").mkdir()
    files = _hive_tensors(core)
    files["extra.safetensors"] = {**{k: v.detach().cpu().contiguous() for k, v in extra.items()}, "rng/torch": torch.get_rng_state()}
    with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:  # serialising and hashing release the GIL
        digests = dict(zip(files, pool.map(lambda item: _write_tensors(tmp / item[0], item[1]), files.items()), strict=True))
    stack = {"levels": [lv.model_dump(mode="json") for lv in core.levels], "origin": dict(core.origin)}
    full_state = {**state, "agents": core.agents, "stack": stack, "level_states": {name: st.to_dict() for name, st in core.states.items()}}
    _write_json(tmp / "state.json", full_state)
    digests["state.json"] = _sha256(tmp / "state.json")
    manifest = {rel: {"sha256": digests[rel], "bytes": (tmp / rel).stat().st_size} for rel in [*files, "state.json"]}
    _write_json(tmp / "manifest.json", manifest)
    for rel in ["state.json", "manifest.json"]:
        fsync_file(tmp / rel)
    for d in (tmp / "levels", tmp / "optim", tmp):
        fsync_dir(d)
    final, prev = run / NAME, run / PREV
    if final.exists():
        if prev.exists():
            shutil.rmtree(prev)
        move_into_place(final, prev)
    move_into_place(tmp, final)
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


#: The only files a checkpoint may hold (besides manifest.json): safetensors and one JSON file.
_ALLOWED = re.compile(r"^((levels|optim)/[A-Za-z_][A-Za-z0-9_]*\.safetensors|extra\.safetensors|state\.json)$")
#: Largest manifest.json / state.json read (both are small plain JSON).
_MAX_JSON_BYTES = 64 << 20


def _read_json(path: Path) -> Any:
    try:
        return json.loads(read_bounded(path, _MAX_JSON_BYTES).decode("utf-8"))
    except TooLarge:
        raise CheckpointError(f"{path}: more than {_MAX_JSON_BYTES} bytes is too large for a checkpoint JSON file") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: unreadable: {e}") from None


def _verify(ckpt: Path) -> dict[str, Any]:
    """Check the manifest names only allowed files, every file matches it, and nothing else is there."""
    manifest = _read_json(ckpt / "manifest.json")
    if not isinstance(manifest, dict) or "state.json" not in manifest:
        raise CheckpointError(f"{ckpt / 'manifest.json'}: not a lorahive checkpoint manifest")
    for rel, meta in manifest.items():
        path = ckpt / rel
        if not isinstance(rel, str) or not _ALLOWED.match(rel):
            raise CheckpointError(f"{path}: not a file a checkpoint may hold (only levels/*.safetensors, optim/*.safetensors, extra.safetensors, state.json)")
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        if not isinstance(meta, dict) or path.stat().st_size != meta.get("bytes") or _sha256(path) != meta.get("sha256"):
            raise CheckpointError(f"{path}: corrupted or truncated (size or sha256 differs from the manifest)")
    for path in sorted(ckpt.rglob("*")):
        rel = path.relative_to(ckpt).as_posix()
        if (path.is_file() or path.is_symlink()) and rel != "manifest.json" and rel not in manifest:
            raise CheckpointError(f"{path}: not listed in manifest.json; refusing a checkpoint with planted files (lorahive never unpickles .bin/.pt)")
    return manifest


def _header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor name -> (shape, dtype) from the safetensors header, reading no tensor data."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), str(f.get_slice(k).get_dtype())) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors file: {e}") from None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors file: {e}") from None


_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


def _expect(file: Path, header: dict[str, tuple[tuple[int, ...], str]], want: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """Every expected tensor present with its shape and dtype, and no other tensor."""
    extra = sorted(set(header) - set(want))
    if extra:
        raise CheckpointError(f"{file}: unexpected tensors {extra[:3]}")
    for key, (shape, dtype) in want.items():
        if key not in header:
            raise CheckpointError(f"{file}: {key} is missing")
        if header[key] != (shape, dtype):
            raise CheckpointError(f"{file}: {key} has shape {list(header[key][0])} and dtype {header[key][1]}; expected {list(shape)} and {dtype}")


def _check_level(core: HiveCore, level: str, n_agents: int, file: Path) -> dict[str, torch.Tensor]:
    """Check shapes and dtypes from the header, then load and check the values are finite."""
    n = core.capacity_for(level, n_agents)
    want: dict[str, tuple[tuple[int, ...], str]] = {}
    tables: dict[str, LevelBank] = {}  # banks that regenerate their init: their chunk tables are checked here
    header = _header(file)
    for path, bank in core.named_banks(level):
        dtype = _DTYPES.get(bank.A.dtype, str(bank.A.dtype))
        for k, ref in (("A", bank.A), ("B", bank.B)):
            want[f"{path}/{k}"] = ((n, *ref.shape[1:]), dtype)
        if bank.store_init:
            want[f"{path}/A0"] = ((n, *bank.A.shape[1:]), dtype)
        else:
            chunks = header.get(f"{path}/A0_chunks", ((0, 2), ""))[0][0]
            want[f"{path}/A0_chunks"] = ((chunks, 2), "I64")
            tables[path] = bank
        other = f"{path}/A0_chunks" if bank.store_init else f"{path}/A0"
        if other in header:
            mode = "regenerates" if bank.store_init else "stores"
            raise CheckpointError(f"{file}: {path}'s init was saved by a core that {mode} it (MemorySpec.store_init {not bank.store_init}); load it with the same store_init")
    _expect(file, header, want)
    tensors = _load_tensors(file)
    for key, t in tensors.items():
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{file}: {key} holds NaN or inf")
    for path, bank in tables.items():
        try:
            check_chunks(bank.key, bank.rank, bank.in_features, n, _chunk_table(tensors[f"{path}/A0_chunks"]))
        except ValueError as e:  # InitMismatch included
            raise CheckpointError(f"{file}: {e}") from None
    return tensors


def _check_optim(core: HiveCore, level: str, n_agents: int, file: Path) -> dict[str, torch.Tensor]:
    """Per-slot AdamW state of ``level``: moments shaped like the parameters, one step count per slot.

    A state may cover fewer slots than the bank (slots added since the last step have none yet).
    """
    n = core.capacity_for(level, n_agents)
    header = _header(file)
    params = core.level_params(level)
    for key, (shape, dtype) in header.items():
        name, _, kind = key.rpartition(":")
        p = params.get(name)
        if p is None or kind not in ("exp_avg", "exp_avg_sq", "step"):
            raise CheckpointError(f"{file}: unexpected tensor {key!r}")
        slots = header.get(f"{name}:step", ((0,), ""))[0][0]
        want = ((slots,), "I64") if kind == "step" else ((slots, *p.shape[1:]), _DTYPES.get(p.dtype, str(p.dtype)))
        if (shape, dtype) != want or not 0 < slots <= n or not all(f"{name}:{k}" in header for k in ("exp_avg", "exp_avg_sq", "step")):
            raise CheckpointError(f"{file}: {key} has shape {list(shape)} and dtype {dtype}; expected {list(want[0])} and {want[1]} with all three AdamW tensors")
    tensors = _load_tensors(file)
    for key, t in tensors.items():
        if not torch.isfinite(t).all() or (not key.endswith(":exp_avg") and bool((t < 0).any())):
            raise CheckpointError(f"{file}: {key} holds values no optimizer state can hold (NaN, inf or negative)")
    return tensors


def _check_extra(file: Path) -> dict[str, torch.Tensor]:
    header = _header(file)
    rng = torch.get_rng_state()
    if "rng/torch" in header and header["rng/torch"] != (tuple(rng.shape), "U8"):
        raise CheckpointError(f"{file}: rng/torch is not a torch RNG state")
    tensors = _load_tensors(file)
    for key, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{file}: {key} holds NaN or inf")
    return tensors


def _check_stack(core: HiveCore, state: dict[str, Any], file: Path) -> tuple[StackSpec, dict[str, str]]:
    """The checkpoint's level stack and origins (the core's own when state.json predates them)."""
    raw = state.get("stack")
    if raw is None:
        return core.stack, dict(core.origin)
    try:
        stack = StackSpec.model_validate({"levels": raw["levels"]})
        origin = {str(k): str(v) for k, v in dict(raw.get("origin", {})).items()}
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: stack is not a level stack: {e}") from None
    if set(origin) - set(stack.names()):
        raise CheckpointError(f"{file}: stack.origin names levels the stack lacks: {sorted(set(origin) - set(stack.names()))}")
    return stack, origin


def _check_state(core: HiveCore, file: Path) -> tuple[dict[str, Any], tuple[StackSpec, dict[str, str]]]:
    """state.json: a mapping whose agents extend the core's and whose level states are valid; and its stack."""
    state = _read_json(file)
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: not a JSON object")
    agents = state.get("agents")
    if not isinstance(agents, list) or not all(isinstance(a, str) and a for a in agents) or len(set(agents)) != len(agents):
        raise CheckpointError(f"{file}: agents must be a list of distinct non-empty names")
    if agents[: len(core.agents)] != core.agents:
        raise CheckpointError(f"{file}: its agents do not extend this core's agents")
    stack = _check_stack(core, state, file)
    names = stack[0].names()
    states = state.get("level_states", {})
    if not isinstance(states, dict) or set(states) - set(names):
        raise CheckpointError(f"{file}: level_states must map the checkpoint's level names ({names}) to level states")
    try:
        state["level_states"] = {name: LevelState.from_dict(name, v) for name, v in states.items()}
    except LevelStateError as e:
        raise CheckpointError(f"{file}: {e}") from None
    tick = state.get("tick", 0)
    if not isinstance(tick, int) or isinstance(tick, bool) or tick < 0:
        raise CheckpointError(f"{file}: tick must be a non-negative integer, got {tick!r}")
    return state, stack


def load(run_dir: str | Path, core: HiveCore, validate: Callable[[dict[str, Any], Path], object] | None = None) -> Loaded:
    """Verify the checkpoint, then restore levels, optimizer state, agents and level states into ``core``.

    Every file is hash-checked, and every tensor's name, shape, dtype and values checked,
    before anything is written into the core: a refused checkpoint leaves the core as it was.
    ``validate(state, file)`` checks the run's own bookkeeping in state.json (it raises to refuse).
    """
    ckpt = locate(run_dir)
    manifest = _verify(ckpt)
    state, stack = _check_state(core, ckpt / "state.json")
    if validate is not None:
        validate(state, ckpt / "state.json")
    was = (core.stack, dict(core.origin))
    core.set_stack(*stack)  # the stack as the run had it; undone on a refusal
    try:
        return _load_checked(core, ckpt, manifest, state)
    except BaseException:
        core.set_stack(*was)
        raise


def _load_checked(core: HiveCore, ckpt: Path, manifest: dict[str, Any], state: dict[str, Any]) -> Loaded:
    """:func:`load` once the core has the checkpoint's stack: check every tensor, then write them in."""
    agents: list[str] = state["agents"]
    levels, optim = {}, {}
    for lv in core.levels:
        rel = f"levels/{lv.name}.safetensors"
        if rel not in manifest:
            raise CheckpointError(f"{ckpt / rel}: missing (the core has level {lv.name!r})")
        levels[lv.name] = _check_level(core, lv.name, len(agents), ckpt / rel)
        if f"optim/{lv.name}.safetensors" in manifest:
            optim[lv.name] = _check_optim(core, lv.name, len(agents), ckpt / f"optim/{lv.name}.safetensors")
    if "extra.safetensors" not in manifest:
        raise CheckpointError(f"{ckpt / 'extra.safetensors'}: missing")
    extra = _check_extra(ckpt / "extra.safetensors")
    core.add_agents(agents[len(core.agents) :])
    with torch.no_grad():
        for name, tensors in levels.items():
            for path, bank in core.named_banks(name):
                bank.grow(tensors[f"{path}/A"].shape[0])
                bank.A.copy_(tensors[f"{path}/A"])
                bank.B.copy_(tensors[f"{path}/B"])
                if bank.store_init:
                    bank.load_init(range(bank.n_slots), tensors[f"{path}/A0"])
                else:
                    bank.set_chunks(_chunk_table(tensors[f"{path}/A0_chunks"]))
    for name, flat in optim.items():
        core.optimizers[name].load_state_dict(flat)
    core.states.update(state["level_states"])
    core.rescan()
    if "rng/torch" in extra:
        torch.set_rng_state(extra.pop("rng/torch"))
    return Loaded(state, extra)
