"""Reading a run config: YAML files, ``key.sub=value`` overrides, and writing it back.

A bad file or value fails here, before anything is written, with the file's name and each
bad field's dotted name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lorahive.config.errors import ConfigError, format_config_error
from lorahive.config.run import RunConfig

__all__ = ["MAX_CONFIG_BYTES", "dump_config", "load_config", "parse_config"]


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Put ``value`` at ``a.b.c`` in ``tree``, creating the sections on the way."""
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_config(data: dict[str, Any] | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Validate a config tree after applying ``key.sub=value`` overrides (values are YAML)."""
    tree = dict(data or {})
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. ticks=5 or agent.fast_steps=3)")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item[:200]!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
        _set(tree, key.strip(), value)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_config_error(e)) from None


#: Largest config file read (a run config is a few hundred bytes).
MAX_CONFIG_BYTES = 1 << 20


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run config; errors name the file and the field."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p}: {p.stat().st_size} bytes is too large for a config file (limit {MAX_CONFIG_BYTES})")
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (yaml.YAMLError, RecursionError) as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of fields, got {type(data).__name__}")
    suite = (data or {}).get("suite")
    if isinstance(suite, dict) and isinstance(suite.get("root"), str) and not Path(suite["root"]).is_absolute():
        suite["root"] = str((p.parent / suite["root"]).resolve())  # relative to the config file
    try:
        return parse_config(data, overrides)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def dump_config(cfg: RunConfig) -> str:
    """The YAML text of ``cfg``, every field written out; :func:`load_config` reads it back."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
