"""Reading a run config: YAML files, ``key.sub=value`` overrides, and writing it back.

A bad file or value fails here, before anything is written, with the file's name and each
bad field's dotted name.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from lorahive.config.errors import ConfigError, format_config_error
from lorahive.config.levels import default_levels
from lorahive.config.run import RunConfig

__all__ = ["MAX_CONFIG_BYTES", "apply_overrides", "dump_config", "load_config", "parse_config", "read_tree"]


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice (the last one would win silently)."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, str | int | float | bool):
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {str(key)[:80]!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)
# YAML 1.1 reads ``1e-4`` (no dot) as a string; people (and JSON) write it that way for a number.
_FLOAT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _yaml_problem(e: BaseException) -> str:
    """A YAML error on one line: the problem and where it is."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        mark = e.problem_mark
        return f"{e.problem}" + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else "")
    return " ".join(str(e).split())[:300]


def _index(items: list[Any], key: str, dotted: str, where: str) -> int:
    """``key`` as an index into the list ``items`` (the section ``where``), or a ConfigError naming the override.

    In a list of named entries (each a mapping with a ``name``, as ``levels``) ``key`` may be the name.
    """
    names = [item.get("name") for item in items if isinstance(item, dict)]
    if not key.isdigit() and len(names) == len(items) and all(isinstance(n, str) for n in names):
        if key not in names:
            raise ConfigError(f"override {dotted!r}: {where} has no entry named {key!r}; its names are {names} (or an index 0–{len(items) - 1})")
        return names.index(key)
    if not key.isdigit() or int(key) >= len(items):
        raise ConfigError(f"override {dotted!r}: {where} is a list of {len(items)} items; {key!r} is not one of its indices 0–{len(items) - 1}")
    return int(key)


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Put ``value`` at ``a.b.c`` in ``tree``, creating the sections on the way; a number indexes a list (``stages.1.steps``)."""
    keys = dotted.split(".")
    node: Any = tree
    for depth, k in enumerate(keys[:-1]):
        where = ".".join(keys[:depth]) or "the config"
        if isinstance(node, list):
            node = node[_index(node, k, dotted, where)]
        else:
            node = node.setdefault(k, {})
        if not isinstance(node, dict | list):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    if isinstance(node, list):
        node[_index(node, keys[-1], dotted, ".".join(keys[:-1]))] = value
    else:
        node[keys[-1]] = value


def apply_overrides(data: dict[str, Any] | None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """A copy of the config tree ``data`` with ``key.sub=value`` overrides applied (values are YAML); ``data`` is left as it was."""
    tree = copy.deepcopy(dict(data or {}))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. ticks=5 or agent.fast_steps=3)")
        try:
            value = yaml.load(raw, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item[:200]!r}: the value is not valid YAML ({_yaml_problem(e)})") from None
        _set(tree, key.strip(), value)
    return tree


def parse_config(data: dict[str, Any] | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Validate a config tree after applying ``key.sub=value`` overrides (values are YAML).

    ``levels.NAME.field=value`` edits one level by its name (``levels.swarm.lr=1e-3``); when the tree has no
    ``levels``, the default five-level stack is written out first, so such an override edits the defaults.
    """
    if data is not None and "levels" not in data and any(o.partition("=")[0].strip().startswith("levels.") for o in overrides):
        data = {**data, "levels": [lv.model_dump(mode="json") for lv in default_levels().levels]}
    elif data is None and any(o.partition("=")[0].strip().startswith("levels.") for o in overrides):
        data = {"levels": [lv.model_dump(mode="json") for lv in default_levels().levels]}
    tree = apply_overrides(data, overrides)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_config_error(e)) from None


#: Largest config file read (a run config is a few hundred bytes).
MAX_CONFIG_BYTES = 1 << 20


def read_tree(path: str | Path) -> dict[str, Any]:
    """The YAML mapping of a config file, unvalidated; errors name the file.

    Relative data paths (``suite.root``, and ``root``/``path`` of each ``data`` set of a
    stages config) are made relative to the config file.
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # bounded by bytes actually read: /dev/zero reports size 0
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p}: more than {MAX_CONFIG_BYTES} bytes is too large for a config file")
        data = yaml.load(raw.decode("utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (yaml.YAMLError, RecursionError) as e:
        raise ConfigError(f"{p}: invalid YAML: {_yaml_problem(e)}") from None
    if data is None or data == {}:
        raise ConfigError(f"{p}: the config file is empty; write at least one field (e.g. `ticks: 4`), or use `lorahive demo` for the demo")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of fields, got {type(data).__name__}")
    sections = [data.get("suite")]
    if isinstance(data.get("data"), dict):
        sections += list(data["data"].values())
    for section in sections:
        for key in ("root", "path"):
            if isinstance(section, dict) and isinstance(section.get(key), str) and not Path(section[key]).is_absolute():
                section[key] = str((p.parent / section[key]).resolve())  # relative to the config file
    return data


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run config; errors name the file and the field."""
    data = read_tree(path)
    try:
        return parse_config(data, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def dump_config(cfg: BaseModel) -> str:
    """The YAML text of ``cfg``, every field written out; :func:`load_config` reads it back."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
