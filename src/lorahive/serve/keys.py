"""API keys of a served run: ``RUN_DIR/keys.json`` holds SHA-256 hashes of keys, never a key.

A key is ``lh-`` + 32 random bytes (URL-safe base64); its entry is ``{"id", "sha256", "role",
"created"}`` where ``role`` is an agent's name (that agent only) or ``"admin"`` (every agent).
With no keys file, or one holding no key, the server is open (docs/serving.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorahive.config import ConfigError, load_config
from lorahive.store.files import TooLarge, atomic_write_json, read_bounded

__all__ = ["ADMIN", "KEYS_FILE", "KeyError_", "KeyStore", "add_key", "hash_key", "read_keys"]

KEYS_FILE = "keys.json"
ADMIN = "admin"
_LIMIT = 16 << 20


class KeyError_(ValueError):
    """A keys file or a key request that cannot be used."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def read_keys(run_dir: str | Path) -> list[dict[str, Any]]:
    """The entries of ``run_dir``'s keys file ([] when there is none)."""
    path = Path(run_dir) / KEYS_FILE
    if not path.exists():
        return []
    try:
        data = json.loads(read_bounded(path, _LIMIT))
    except (OSError, TooLarge, ValueError) as e:
        raise KeyError_(f"{path}: cannot be read as a keys file: {e}") from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, dict) and isinstance(k.get("sha256"), str) and isinstance(k.get("role"), str) for k in keys):
        raise KeyError_(f"{path}: not a lorahive keys file (expected {{\"keys\": [{{\"sha256\", \"role\", ...}}]}})")
    return keys


def add_key(run_dir: str | Path, role: str) -> tuple[str, dict[str, Any]]:
    """A new key for ``role`` (an agent of the run, or ``"admin"``): the key (shown once) and its stored entry."""
    run_dir = Path(run_dir)
    try:
        agents = load_config(run_dir / "config.yaml", []).agent_names()
    except ConfigError as e:
        raise KeyError_(f"{run_dir} holds no lorahive run: {e}") from None
    if role != ADMIN and role not in agents:
        raise KeyError_(f"{run_dir} has no agent {role!r}; its agents are: {', '.join(agents)}")
    keys = read_keys(run_dir)
    key = "lh-" + secrets.token_urlsafe(32)
    digest = hash_key(key)
    entry = {"id": digest[:12], "sha256": digest, "role": role, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_json(run_dir / KEYS_FILE, {"keys": [*keys, entry]})
    return key, entry


@dataclass(frozen=True)
class _Loaded:
    stamp: tuple[int, int, int] | None  # (mtime ns, inode, size) of the file read; None: no file
    keys: tuple[tuple[str, str], ...]  # (sha256, role)


class KeyStore:
    """The keys of ``run_dir``, re-read when the file changes (mtime, inode, size); :meth:`role` checks a key.

    A file that stops being readable keeps the keys last read; a file that is removed opens the server.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / KEYS_FILE
        self._lock = threading.Lock()
        self._loaded = self._load()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_ino, st.st_size

    def _load(self) -> _Loaded:
        stamp = self._stamp()
        return _Loaded(stamp, tuple((k["sha256"], k["role"]) for k in read_keys(self.path.parent)))

    def _current(self) -> _Loaded:
        with self._lock:
            if self._stamp() != self._loaded.stamp:
                with contextlib.suppress(KeyError_):  # a broken file keeps the keys last read; never falls open
                    self._loaded = self._load()
            return self._loaded

    @property
    def enabled(self) -> bool:
        """Whether requests need a key (the file holds at least one)."""
        return bool(self._current().keys)

    def role(self, key: str) -> str | None:
        """The role of ``key`` (an agent's name or ``"admin"``), or None for an unknown key."""
        digest = hash_key(key)
        found = None
        for stored, role in self._current().keys:
            if hmac.compare_digest(stored, digest):
                found = role
        return found
