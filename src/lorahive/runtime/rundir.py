"""Run directories: what a run owns in its folder, and when a folder may be used or cleared.

A folder is used for a new run only when it is new, holds none of the files a run writes, or
(with ``--force``) holds a run whose ``config.yaml`` loads; only the files a run creates
(:data:`OWNED`) are ever removed.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lorahive.config import (
    ConfigError,
    is_stages_tree,
    parse_config,
    parse_stages_config,
    read_tree,
)
from lorahive.store import checkpoint
from lorahive.store.files import atomic_write_text
from lorahive.store.lock import LOCK_NAME, run_lock

__all__ = ["OWNED", "RUN_FILES", "RunDirError", "check_dir", "is_stages_run", "make_dirs", "prepare_dir", "remove_owned", "starting", "undo_start"]

RUN_FILES = ("config.yaml", "checkpoint", "ledger.sqlite", "metrics.json", "stages.safetensors")
OWNED = (*RUN_FILES, "checkpoint.prev", ".checkpoint.tmp", "ledger.sqlite-wal", "ledger.sqlite-shm", "ledger.sqlite-journal", "report.html", ".config.yaml.tmp", ".metrics.json.tmp", "keys.json", ".keys.json.tmp", ".stages.safetensors.tmp")


class RunDirError(ValueError):
    """A run directory that cannot be used as asked."""


def _holds_run(out: Path) -> bool:
    """Whether ``out/config.yaml`` loads as a run config (a swarm run's or a stages run's)."""
    try:
        tree = read_tree(out / "config.yaml")  # read once, validated as whichever kind of run it is
        if is_stages_tree(tree):
            parse_stages_config(tree)
        else:
            parse_config(tree)
    except ConfigError:
        return False
    return True


def is_stages_run(out: Path) -> bool:
    """Whether ``out/config.yaml`` is a stages run's config (docs/stages.md); False when it is missing or unreadable."""
    try:
        return is_stages_tree(read_tree(out / "config.yaml"))
    except ConfigError:
        return False


def check_dir(out: Path, force: bool) -> None:
    """Refuse ``out`` unless it is new, free of run files, or (with ``force``) holds a run; writes nothing."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise RunDirError(f"--out {out} exists and is not a directory")
    if not out.exists():
        return
    present = [f for f in OWNED if (out / f).exists() or (out / f).is_symlink()]
    if not present:
        return
    if not _holds_run(out):
        raise RunDirError(f"{out} holds no lorahive run but has {', '.join(present)}; lorahive removes only files a run created — pick another --out")
    if not force:
        raise RunDirError(f"{out} already holds a run ({', '.join(f for f in present if f in RUN_FILES)}); use --force to overwrite or `lorahive resume {out}`")
    links = [f for f in present if (out / f).is_symlink()]
    if links:
        raise RunDirError(f"{out}: {', '.join(links)} is a symbolic link; --force removes only files a run created, not what a link points to")


def remove_owned(out: Path) -> None:
    for f in OWNED:
        p = out / f
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink(missing_ok=True)


def prepare_dir(out: Path, force: bool) -> None:
    """Refuse to overwrite a run unless ``force``; with ``force`` remove the old run's files only."""
    check_dir(out, force)
    remove_owned(out)
    out.mkdir(parents=True, exist_ok=True)


def undo_start(out: Path, had_lock: bool, created: list[Path]) -> None:
    """After a start failed before it wrote its config: drop the lock file it made and the folders it created."""
    if (out / "config.yaml").exists():
        return
    if not had_lock:
        (out / LOCK_NAME).unlink(missing_ok=True)
    for d in created:
        try:
            d.rmdir()
        except OSError:
            break


def make_dirs(out: Path) -> list[Path]:
    """Create ``out`` and missing parents; returns those created, deepest first."""
    missing = [p for p in (out, *out.parents) if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    return missing


@contextmanager
def starting(out: Path, force: bool, config_text: str, on_failure: Callable[[], None] = lambda: None) -> Iterator[None]:
    """A new run in ``out`` (checked with :func:`check_dir`): locked, cleared, its config written.

    A failure inside before the first checkpoint calls ``on_failure`` (e.g. to close the
    ledger) and removes what the run wrote; one before the config was written also drops the
    lock file and the folders this created, so the folder is as it was.
    """
    created = make_dirs(out)
    had_lock = (out / LOCK_NAME).exists()
    locked = False
    try:
        with run_lock(out):
            locked = True
            try:
                prepare_dir(out, force)
                atomic_write_text(out / "config.yaml", config_text)
                yield
            except BaseException:
                if not any((out / n / "manifest.json").is_file() for n in (checkpoint.NAME, checkpoint.PREV)):
                    on_failure()
                    remove_owned(out)
                raise
    except BaseException:
        if locked:
            undo_start(out, had_lock, created)
        raise
