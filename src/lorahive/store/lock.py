"""One writer per run directory: an OS lock (``flock``) on ``RUN/.lock``.

Every process that writes a run directory (``run``, ``resume``, ``import-peft``) holds the
lock for its whole life; a second writer is refused at once. The lock belongs to the open
file, so it dies with its process: a crashed (even SIGKILLed) holder never blocks a later
resume. The file itself is left in place (removing it would race with a new holder).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LOCK_NAME", "RunLockedError", "run_lock"]

LOCK_NAME = ".lock"


class RunLockedError(ValueError):
    """Another process holds the run directory's lock."""


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold the exclusive lock of ``run_dir`` (which must exist) for the ``with`` block."""
    path = Path(run_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise RunLockedError(f"{run_dir} is in use by another lorahive process (pid {holder}); wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)
