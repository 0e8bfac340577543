"""The one owner of atomic writes, fsync, bounded reads and SHA-256 of files.

``atomic_write_bytes`` / ``atomic_write_text`` / ``atomic_write_json`` write a temporary
sibling, fsync it, rename it over the target and fsync the folder: a reader sees the old
file or the new one, never half of one. ``read_bounded`` reads at most ``limit`` bytes
*actually read* (not the size the file system reports: ``/dev/zero`` reports 0).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["TooLarge", "atomic_write_bytes", "move_into_place", "atomic_write_json", "atomic_write_text", "fsync_dir", "fsync_file", "read_bounded", "sha256_file"]


class TooLarge(ValueError):
    """A file holding more bytes than its reader allows."""


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def move_into_place(src: str | Path, dst: str | Path) -> None:
    """Rename ``src`` (a file or folder, already fsynced) over ``dst`` atomically; fsync the folder."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary sibling, fsync, rename, fsync folder)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        move_into_place(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int = 1, sort_keys: bool = False) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys))


def sha256_file(path: str | Path) -> str:
    """SHA-256 (hex) of one file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_bounded(path: str | Path, limit: int) -> bytes:
    """The bytes of ``path``; :class:`TooLarge` once more than ``limit`` bytes have been read."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"{path}: more than {limit} bytes is too large")
    return data
