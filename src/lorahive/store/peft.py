"""PEFT interop: an agent's view of the core as a standard PEFT LoRA adapter, and back.

Export is exact by rank concatenation (DESIGN.md invariant 4): for a module targeted by
levels 1..n with scales s_l = mix_l · alpha_l / r_l,

    Σ_l s_l · B_l A_l = [s_1 B_1, …, s_n B_n] · [A_1; …; A_n] = B_cat · A_cat,

so the adapter stores A_cat (Σr, in) and B_cat (out, Σr) with ``lora_alpha = r`` (scale 1).
Modules reached by fewer levels get a smaller rank through ``rank_pattern`` /
``alpha_pattern`` (PEFT ≥ 0.13 semantics: a pattern key matches a module path that ends in it).

Import puts a PEFT LoRA adapter into one slot of one level, so that level alone adds the
adapter's ΔW. Only ``adapter_model.safetensors`` is read; pickle files are refused.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lorahive.adapters.bank import LevelBank
from lorahive.core import HiveCore
from lorahive.store.files import TooLarge, fsync_file, move_into_place, read_bounded

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "ImportReport", "export_peft", "import_peft"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_KEY = re.compile(r"^base_model\.model\.(?P<path>.+)\.lora_(?P<which>[AB])\.weight$")
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
#: rank_pattern / alpha_pattern keys: plain dotted module-name suffixes (no regex: no backtracking).
_SUFFIX = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
_MAX_PATTERNS = 4096
_MAX_CONFIG_BYTES = 16 << 20


# ---------------------------------------------------------------------- export
def _view(core: HiveCore, agent: str, levels: list[str], path: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A_cat (R, in) and B_cat (out, R) of one module for ``agent``; None if no level targets it."""
    layer = core.layers[path]
    a_parts, b_parts = [], []
    for lv in core.levels:
        if lv.name not in levels or lv.name not in layer.banks:
            continue
        bank = layer.banks[lv.name]
        assert isinstance(bank, LevelBank)
        slot = core.slot_of(lv.name, agent)
        s = core.mix[lv.name] * lv.scale
        a_parts.append(bank.A.detach()[slot].float().cpu())  # (r_l, in)
        b_parts.append(bank.B.detach()[slot].float().cpu() * s)  # (out, r_l)
    if not a_parts:
        return None
    return torch.cat(a_parts, 0), torch.cat(b_parts, 1)


def export_peft(core: HiveCore, agent: str, out_dir: str | os.PathLike, levels: list[str] | None = None) -> Path:
    """Write ``agent``'s view (the sum of ``levels``, default all) as a PEFT LoRA directory.

    ``PeftModel.from_pretrained(base, out_dir)`` on a fresh copy of the base model then gives
    the core's logits for ``agent``. Returns the directory.
    """
    levels = list(core.stack.names() if levels is None else levels)
    core.route([agent], levels)  # raises on an unknown agent or level
    if not levels:
        raise ValueError("levels is empty; name at least one level to export")
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for path in core.layers:
        factors = _view(core, agent, levels, path)
        if factors is None:
            continue
        a_cat, b_cat = factors
        if not (torch.isfinite(a_cat).all() and torch.isfinite(b_cat).all()):
            raise ValueError(f"{path}: the weights of agent {agent!r} hold NaN or inf; refusing to export")
        tensors[f"{_PREFIX}{path}.lora_A.weight"] = a_cat.contiguous()
        tensors[f"{_PREFIX}{path}.lora_B.weight"] = b_cat.contiguous()
        ranks[path.rsplit(".", 1)[-1]] = a_cat.shape[0]  # same levels, same rank, for every module of a leaf name
    r = Counter(ranks.values()).most_common(1)[0][0]
    odd = {leaf: rank for leaf, rank in ranks.items() if rank != r}
    config = LoraConfig(
        r=r,
        lora_alpha=r,
        target_modules=sorted(ranks),
        rank_pattern=dict(odd),
        alpha_pattern={leaf: rank for leaf, rank in odd.items()},
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=getattr(core.model.config, "_name_or_path", None) or None,
    )
    return _write(Path(out_dir), config, tensors)


def _write(out: Path, config: LoraConfig, tensors: dict[str, torch.Tensor]) -> Path:
    """Write both files into a temporary folder beside ``out``, then move each into place."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".peft-export-", dir=out))
    try:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
            fsync_file(tmp / name)
            move_into_place(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---------------------------------------------------------------------- import
@dataclass(frozen=True)
class ImportReport:
    """What an import did to one slot of one level.

    ranks: module -> the adapter's rank there. errors: module -> relative Frobenius error
    ‖ΔW_adapter − ΔW_level‖ / ‖ΔW_adapter‖ (0 where the level's rank suffices; a truncated SVD
    otherwise). zeroed: modules of the level the adapter does not touch (their B was set to 0).
    """

    level: str
    slot: int
    ranks: dict[str, int]
    errors: dict[str, float]
    zeroed: list[str]

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)


def _read_config(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory holding a PEFT adapter")
    if not (directory / ADAPTER_WEIGHTS).is_file():
        if (directory / "adapter_model.bin").exists():
            raise ValueError(f"{directory}: only adapter_model.bin (a pickle) is present; lorahive never unpickles — save it as {ADAPTER_WEIGHTS}")
        raise ValueError(f"{directory}: missing {ADAPTER_WEIGHTS}")
    if not (directory / ADAPTER_CONFIG).is_file():
        raise ValueError(f"{directory}: missing {ADAPTER_CONFIG}")
    try:
        cfg = json.loads(read_bounded(directory / ADAPTER_CONFIG, _MAX_CONFIG_BYTES).decode("utf-8"))
    except TooLarge:
        raise ValueError(f"{directory / ADAPTER_CONFIG}: too large for an adapter config (limit {_MAX_CONFIG_BYTES} bytes)") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{directory / ADAPTER_CONFIG}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise ValueError(f"{directory / ADAPTER_CONFIG}: peft_type must be 'LORA'")
    for key, ok in (("use_dora", False), ("fan_in_fan_out", False), ("lora_bias", False), ("bias", "none")):
        if cfg.get(key, ok) not in (ok, None):
            raise ValueError(f"{directory / ADAPTER_CONFIG}: {key}={cfg[key]!r} is not supported (need {ok!r})")
    if cfg.get("modules_to_save"):
        raise ValueError(f"{directory / ADAPTER_CONFIG}: modules_to_save {cfg['modules_to_save']} cannot be held by a LoRA level")
    return cfg


def _number(cfg: dict[str, Any], pattern_key: str, default_key: str, path: str) -> float:
    """The value for ``path``: the first pattern key the path ends in (PEFT's rule), else the default."""
    patterns = cfg.get(pattern_key) or {}
    if not isinstance(patterns, dict):
        raise ValueError(f"{ADAPTER_CONFIG}: {pattern_key} must be a mapping, got {type(patterns).__name__}")
    if len(patterns) > _MAX_PATTERNS:
        raise ValueError(f"{ADAPTER_CONFIG}: {pattern_key} has {len(patterns)} keys; at most {_MAX_PATTERNS}")
    for key, value in patterns.items():
        if not isinstance(key, str) or len(key) > 512 or not _SUFFIX.match(key):
            raise ValueError(
                f"{ADAPTER_CONFIG}: {pattern_key} key {str(key)[:80]!r} is not supported: lorahive matches module-name"
                " suffixes only (dotted names such as 'q_proj' or 'layers.0.self_attn.q_proj'), never regular expressions"
            )
        if path == key or path.endswith("." + key):
            return _positive(value, f"{pattern_key}[{key!r}]")
    return _positive(cfg.get(default_key), default_key)


def _positive(value: Any, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{ADAPTER_CONFIG}: {name} must be a positive finite number, got {value!r}")
    return float(value)


_READ_ERRORS = (OSError, RuntimeError, ValueError, SafetensorError)


def _header(file: Path) -> dict[str, tuple[list[int], str]]:
    """Tensor name -> (shape, dtype) from the safetensors header, without reading any data."""
    try:
        with safe_open(str(file), framework="pt") as f:
            names = list(f.keys())
            return {k: (list(f.get_slice(k).get_shape()), str(f.get_slice(k).get_dtype())) for k in names}
    except _READ_ERRORS as e:
        raise ValueError(f"{file}: not a readable safetensors file ({e})") from None


def _load(file: Path, keys: list[str]) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: f.get_tensor(k).float() for k in keys}
    except _READ_ERRORS as e:
        raise ValueError(f"{file}: not a readable safetensors file ({e})") from None


def _read_factors(directory: Path, cfg: dict[str, Any], core: HiveCore, level: str) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """module path -> (A (r, in), B (out, r), adapter scale), every shape and value checked."""
    file = directory / ADAPTER_WEIGHTS
    header = _header(file)
    paths = _check_keys(list(header), core, level, file)
    for key, (shape, dtype) in header.items():
        _check_shape(key, shape, dtype, core, file)
    raw = _load(file, list(header))
    out: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for path in paths:
        a, b = raw[f"{_PREFIX}{path}.lora_A.weight"], raw[f"{_PREFIX}{path}.lora_B.weight"]
        if a.shape[0] != b.shape[1]:
            raise ValueError(f"{file}: {path}: lora_A has rank {a.shape[0]} but lora_B has rank {b.shape[1]}")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise ValueError(f"{file}: {path}: weights hold NaN or inf")
        r, alpha = _number(cfg, "rank_pattern", "r", path), _number(cfg, "alpha_pattern", "lora_alpha", path)
        if int(r) != a.shape[0]:
            raise ValueError(f"{file}: {path}: the config gives rank {int(r)} but the weights have rank {a.shape[0]}")
        out[path] = (a, b, alpha / (math.sqrt(r) if cfg.get("use_rslora") else r))
    return out


def _check_keys(keys: list[str], core: HiveCore, level: str, file: Path) -> list[str]:
    """Module paths named by ``keys``, each with both factors, wrapped by the core and in ``level``."""
    found: dict[str, set[str]] = {}
    for key in keys:
        m = _KEY.match(key)
        if m is None:
            raise ValueError(f"{file}: unsupported tensor {key!r}; expected '{_PREFIX}<module>.lora_A.weight' / '.lora_B.weight'")
        found.setdefault(m["path"], set()).add(m["which"])
    if not found:
        raise ValueError(f"{file}: holds no LoRA tensors")
    for path, which in found.items():
        if which != {"A", "B"}:
            raise ValueError(f"{file}: {path}: has lora_{''.join(which)} only; both lora_A and lora_B are needed")
        if path not in core.layers:
            raise ValueError(f"{file}: unknown module {path!r}: the core wraps no such Linear")
        if level not in core.layers[path].banks:
            raise ValueError(f"{file}: module {path!r} is not targeted by level {level!r}")
    return sorted(found)


def _check_shape(key: str, shape: list[int], dtype: str, core: HiveCore, file: Path) -> None:
    """A is (r, in_features), B is (out_features, r), 0 < r ≤ 4096, a float dtype."""
    m = _KEY.match(key)
    assert m is not None
    layer = core.layers[m["path"]]
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{file}: {key}: dtype {dtype} is not a float type")
    is_a = m["which"] == "A"
    fixed, axis = (layer.in_features, 1) if is_a else (layer.out_features, 0)
    if len(shape) != 2 or shape[axis] != fixed or not 0 < shape[1 - axis] <= 4096:
        want = f"(r, in_features={fixed})" if is_a else f"(out_features={fixed}, r)"
        raise ValueError(f"{file}: {key}: shape {shape} does not fit {want} with 0 < r ≤ 4096")


def _fit(a: torch.Tensor, b: torch.Tensor, s: float, bank: LevelBank, slot: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """New A (r_l, in), B (out, r_l) with B·A = s·b·a when rank(a) ≤ r_l, else its truncated SVD."""
    r, rank = a.shape[0], bank.rank
    if r <= rank:  # zero-pad: extra B columns are 0; extra A rows keep the slot's own A, so they can learn
        new_a = bank.A.detach()[slot].float().cpu().clone()
        new_a[:r] = a
        new_b = torch.zeros(bank.out_features, rank)
        new_b[:, :r] = b * s
        return new_a, new_b, 0.0
    m = (b.double() * s) @ a.double()  # (out, in)
    u, sv, vh = torch.linalg.svd(m, full_matrices=False)
    root = sv[:rank].sqrt()
    norm = float(sv.norm())
    error = float(sv[rank:].norm()) / norm if norm > 0 else 0.0
    return (root[:, None] * vh[:rank]).float(), (u[:, :rank] * root).float(), error


def _slot(core: HiveCore, level: str, agent: str | None) -> int:
    scope = core.stack.get(level).scope
    if scope == "shared":
        if agent is not None:
            raise ValueError(f"level {level!r} is shared (one slot); do not name an agent")
        return 0
    if agent is None:
        raise ValueError(f"level {level!r} has one slot per agent; name the agent whose slot to fill")
    return core.slot_of(level, agent)


@torch.no_grad()
def import_peft(core: HiveCore, adapter_dir: str | os.PathLike, level: str, agent: str | None = None) -> ImportReport:
    """Fill one slot of ``level`` (slot 0 of a shared level, else ``agent``'s) with a PEFT LoRA adapter.

    Afterwards ``level`` alone, at its current mix, adds the adapter's ΔW to every module the
    adapter covers, and nothing to the level's other modules. Everything is read and checked
    before anything is written; the slot's optimizer state is cleared. Decay still pulls the
    slot toward its init snapshot, as it does for learned weights.
    """
    if level not in core.stack.names():
        raise ValueError(f"unknown level {level!r}; levels are {core.stack.names()}")
    slot = _slot(core, level, agent)
    denom = core.mix[level] * core.stack.get(level).scale
    if denom == 0.0:
        raise ValueError(f"level {level!r} has mix 0; it cannot hold an adapter")
    directory = Path(adapter_dir)
    factors = _read_factors(directory, _read_config(directory), core, level)
    banks = dict(core.named_banks(level))
    plans = {path: _fit(a, b, s / denom, banks[path], slot) for path, (a, b, s) in factors.items()}
    for path, (new_a, new_b, _) in plans.items():
        if not (torch.isfinite(new_a).all() and torch.isfinite(new_b).all()):
            raise ValueError(f"{directory / ADAPTER_WEIGHTS}: {path}: the adapter's weights overflow to NaN/inf at this level's scale")
    for path, bank in banks.items():
        if path in plans:
            new_a, new_b, _ = plans[path]
            bank.A[slot] = new_a.to(bank.A.device, bank.A.dtype)
            bank.B[slot] = new_b.to(bank.B.device, bank.B.dtype)
        else:
            bank.B[slot] = 0.0
    core.optimizers[level].reset([slot])
    core.mark_written(level, [slot])
    return ImportReport(
        level=level,
        slot=slot,
        ranks={p: a.shape[0] for p, (a, _, _) in factors.items()},
        errors={p: plan[2] for p, plan in plans.items()},
        zeroed=sorted(set(banks) - set(plans)),
    )
