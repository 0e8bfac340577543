"""The ledger: every proposal, update, score, checkpoint and event of a run, in SQLite.

DESIGN.md §4: who and what shaped the model must always be answerable, with nothing but
the ``sqlite3`` shell. The file is one SQLite database in WAL mode (readers never block the
writing run, and a crash loses at most the open transaction). The tick loop wraps each tick
in :meth:`Ledger.transaction`, so a tick is on record entirely or not at all.

Schema (version :data:`SCHEMA_VERSION`; ``docs/ledger.md`` has example queries)::

    meta(key TEXT PRIMARY KEY, value TEXT)                  schema_version, created_at
    proposals(id, tick, agent, level, norm, cosine, weight,  one row per proposal seen by
              decision, reason, quality, reputation)          aggregation; decision is
                                                              'accepted' or 'rejected'
    updates(id, tick, level, norm, n_proposals, n_accepted,  one row per applied update
            strategy)
    scores(id, tick, agent, task_type, phase, quality, n)    phase 'before' or 'after' learning
    checkpoints(id, tick, path, sha256, created_at)          one row per checkpoint written
    events(id, tick, kind, detail)                           anything else (resume, stage, final_eval,
                                                              and 'mechanism:<name>' for each action
                                                              a mechanism returned; a stages run's
                                                              stage_start, stage_step, stages_measured,
                                                              with tick = optimizer steps before it); detail is JSON

Norms are global L2 norms; ``cosine`` is to the level's running swarm direction (NULL
before it has one); ``weight`` is the factor by which the proposal entered the update.
Non-finite numbers are stored as NULL.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lorahive.mechanisms.base import Aggregate

from lorahive.store.files import sha256_file

__all__ = ["SCHEMA_VERSION", "Ledger", "LedgerError", "sha256_of"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS proposals (
    id INTEGER PRIMARY KEY, tick INTEGER NOT NULL, agent TEXT NOT NULL, level TEXT NOT NULL,
    norm REAL, cosine REAL, weight REAL,
    decision TEXT NOT NULL CHECK (decision IN ('accepted', 'rejected')),
    reason TEXT NOT NULL DEFAULT '', quality REAL, reputation REAL);
CREATE INDEX IF NOT EXISTS proposals_tick ON proposals (tick);
CREATE INDEX IF NOT EXISTS proposals_agent ON proposals (agent);
CREATE TABLE IF NOT EXISTS updates (
    id INTEGER PRIMARY KEY, tick INTEGER NOT NULL, level TEXT NOT NULL, norm REAL,
    n_proposals INTEGER NOT NULL, n_accepted INTEGER, strategy TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS updates_tick ON updates (tick);
CREATE TABLE IF NOT EXISTS scores (
    id INTEGER PRIMARY KEY, tick INTEGER NOT NULL, agent TEXT NOT NULL, task_type TEXT NOT NULL,
    phase TEXT NOT NULL CHECK (phase IN ('before', 'after')), quality REAL, n INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS scores_tick ON scores (tick);
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY, tick INTEGER NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, tick INTEGER NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS events_kind ON events (kind, tick);
"""

_TICK_TABLES = ("proposals", "updates", "scores", "checkpoints", "events")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _real(x: float | None) -> float | None:
    """A finite float, or None (NULL) for None/NaN/inf."""
    return None if x is None or not math.isfinite(float(x)) else float(x)


def sha256_of(path: str | Path) -> str:
    """SHA-256 of a file, or of a directory (every file's relative path and bytes, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f is not path:
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class LedgerError(ValueError):
    """A ledger that cannot be read, or that does not match the checkpoint resumed from."""


class Ledger:
    """An open ledger database; writes commit immediately, or per :meth:`transaction`."""

    def __init__(self, path: str | Path, durable: bool = False) -> None:
        """Open (or create) the ledger; ``durable``: every commit is fsynced (``synchronous=FULL``), so
        a power loss cannot take back a row once written (``lorahive serve``'s acknowledged feedback)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None)  # autocommit; BEGIN explicitly
        self._db.row_factory = sqlite3.Row
        self._depth = 0
        self._closed = False
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._init_schema()
        except sqlite3.DatabaseError as e:
            self._closed = True
            self._db.close()
            raise LedgerError(f"{self.path}: not a readable ledger database ({e}); restore it from a backup or start a new run") from None

    # --- lifecycle ---------------------------------------------------------------------

    def _init_schema(self) -> None:
        self._db.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
        with self.transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                [("schema_version", str(SCHEMA_VERSION)), ("created_at", _now())],
            )
        if self.schema_version != SCHEMA_VERSION:
            version = self.schema_version
            self._db.close()
            raise ValueError(f"{self.path}: ledger schema version {version}, this lorahive reads {SCHEMA_VERSION}")

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()["value"])

    @contextmanager
    def transaction(self) -> Iterator[Ledger]:
        """Group writes (one tick's) into one commit; rolled back if the block raises. Nests."""
        if self._depth == 0:
            self._db.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield self
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self._db.execute("ROLLBACK")
            raise
        self._depth -= 1
        if self._depth == 0:
            self._db.execute("COMMIT")

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        if self._depth:
            self._db.execute("ROLLBACK")
            self._depth = 0
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # --- writing -----------------------------------------------------------------------

    def record_proposal(
        self,
        tick: int,
        agent: str,
        level: str,
        decision: str,
        reason: str = "",
        norm: float | None = None,
        cosine: float | None = None,
        weight: float | None = None,
        quality: float | None = None,
        reputation: float | None = None,
    ) -> None:
        """One proposal and what aggregation decided about it."""
        if decision not in ("accepted", "rejected"):
            raise ValueError(f"decision must be 'accepted' or 'rejected', got {decision!r}")
        self._db.execute(
            "INSERT INTO proposals (tick, agent, level, norm, cosine, weight, decision, reason, quality, reputation)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (tick, agent, level, _real(norm), _real(cosine), _real(weight), decision, reason, _real(quality), _real(reputation)),
        )

    def record_update(self, tick: int, level: str, norm: float | None, n_proposals: int, strategy: str, n_accepted: int | None = None) -> None:
        """One update applied to a level."""
        self._db.execute(
            "INSERT INTO updates (tick, level, norm, n_proposals, n_accepted, strategy) VALUES (?, ?, ?, ?, ?, ?)",
            (tick, level, _real(norm), n_proposals, n_accepted, strategy),
        )

    def record_aggregation(self, tick: int, level: str, result: Aggregate, applied: bool = True) -> None:
        """Every decision of an aggregation result, and the update when one was applied."""
        metrics = result.metrics
        with self.transaction():
            for d in result.decisions:
                self.record_proposal(tick, d.agent, d.level or level, d.decision, d.reason, d.norm, d.cosine, d.weight, d.quality, d.reputation)
            if applied and metrics.get("norm") is not None:
                self.record_update(tick, level, metrics["norm"], int(metrics["n_proposals"]), str(metrics["strategy"]), metrics.get("n_accepted"))

    def record_score(self, tick: int, agent: str, task_type: str, phase: str, quality: float, n: int) -> None:
        """An agent's quality on ``n`` query examples of a task type, before or after learning."""
        if phase not in ("before", "after"):
            raise ValueError(f"phase must be 'before' or 'after', got {phase!r}")
        self._db.execute(
            "INSERT INTO scores (tick, agent, task_type, phase, quality, n) VALUES (?, ?, ?, ?, ?, ?)",
            (tick, agent, task_type, phase, _real(quality), n),
        )

    def record_checkpoint(self, tick: int, path: str | Path, sha256: str | None = None) -> str:
        """A checkpoint written at ``tick``; its hash is computed from ``path`` when not given."""
        digest = sha256 or sha256_of(path)
        self._db.execute(
            "INSERT INTO checkpoints (tick, path, sha256, created_at) VALUES (?, ?, ?, ?)",
            (tick, str(path), digest, _now()),
        )
        return digest

    def record_event(self, tick: int, kind: str, detail: Mapping[str, Any] | None = None) -> int:
        """Anything else worth keeping (migration, decay sweep, split/merge, resume, ...); returns the row's id."""
        cur = self._db.execute(
            "INSERT INTO events (tick, kind, detail) VALUES (?, ?, ?)",
            (tick, kind, json.dumps(dict(detail or {}), sort_keys=True, default=str)),
        )
        return int(cur.lastrowid or 0)

    def forget(self, table: str, first: int, last: int, keep_kinds: tuple[str, ...] = ()) -> int:
        """Delete rows ``first`` to ``last`` (ids, inclusive) of ``table``; events of ``keep_kinds`` stay. Returns rows deleted.

        For learning a crash took back (``lorahive serve``'s rows after the checkpoint's mark).
        """
        if table not in _TICK_TABLES:
            raise ValueError(f"table must be one of {_TICK_TABLES}, got {table!r}")
        keep = f" AND kind NOT IN ({', '.join('?' * len(keep_kinds))})" if keep_kinds and table == "events" else ""
        return int(self._db.execute(f"DELETE FROM {table} WHERE id BETWEEN ? AND ?{keep}", (first, last, *(keep_kinds if keep else ()))).rowcount)

    def max_ids(self) -> dict[str, int]:
        """The last row id of every table (0 when empty)."""
        return {t: int(self._db.execute(f"SELECT COALESCE(MAX(id), 0) FROM {t}").fetchone()[0]) for t in _TICK_TABLES}

    def rollback_to(self, tick: int) -> int:
        """Delete every row after ``tick`` (resuming from a checkpoint at ``tick``); returns rows deleted."""
        with self.transaction():
            deleted = sum(self._db.execute(f"DELETE FROM {t} WHERE tick > ?", (tick,)).rowcount for t in _TICK_TABLES)
            self.record_event(tick, "resume", {"rows_deleted": deleted})
        return deleted

    def rollback_to_mark(self, mark: Mapping[str, Any]) -> int:
        """Delete every row written after a checkpoint's :meth:`mark` (by row id); returns rows deleted.

        For a run whose rows do not follow one tick counter (a stages run writes a stage's
        start and its first step at one tick), so that :meth:`rollback_to` cannot tell them apart.
        """
        max_ids = mark["max_ids"]
        with self.transaction():
            return sum(self._db.execute(f"DELETE FROM {t} WHERE id > ?", (int(max_ids.get(t, 0)),)).rowcount for t in _TICK_TABLES)

    # --- the checkpoint's mark ------------------------------------------------------------

    def _digest(self, max_ids: Mapping[str, int]) -> str:
        h = hashlib.sha256()
        for t in _TICK_TABLES:
            h.update(f"{t}\0".encode())
            for row in self._db.execute(f"SELECT * FROM {t} WHERE id <= ? ORDER BY id", (int(max_ids.get(t, 0)),)):
                h.update(json.dumps(list(row), default=str).encode() + b"\n")
        return h.hexdigest()

    def mark(self) -> dict[str, Any]:
        """Where the ledger stands now (for a checkpoint): last tick, last row id per table, digest of the rows."""
        max_ids = self.max_ids()
        return {"tick": self.last_tick(), "max_ids": max_ids, "digest": self._digest(max_ids)}

    def verify_mark(self, mark: Mapping[str, Any]) -> None:
        """Refuse a ledger whose rows up to a checkpoint's :meth:`mark` are missing or differ."""
        try:
            digest = self._digest(mark["max_ids"])
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"{self.path}: not a readable ledger database ({e})") from None
        if digest != mark["digest"]:
            last = self.last_tick()
            raise LedgerError(
                f"{self.path}: its rows up to tick {mark['tick']} do not match the checkpoint (the ledger is at tick {last}):"
                " it is behind, truncated or edited; restore the ledger that belongs to this checkpoint"
            )

    # --- reading -----------------------------------------------------------------------

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Any read-only SQL, rows as dicts."""
        return [dict(r) for r in self._db.execute(sql, params).fetchall()]

    def last_tick(self) -> int | None:
        """The highest tick anything was recorded at."""
        union = " UNION ALL ".join(f"SELECT MAX(tick) AS t FROM {t}" for t in _TICK_TABLES)
        return self._db.execute(f"SELECT MAX(t) FROM ({union})").fetchone()[0]

    def acceptance_by_tick(self, level: str | None = None) -> list[dict[str, Any]]:
        """Per tick: accepted, rejected, and the acceptance rate of proposals."""
        where, params = ("WHERE level = ?", (level,)) if level else ("", ())
        return self.query(
            "SELECT tick, SUM(decision = 'accepted') AS accepted, SUM(decision = 'rejected') AS rejected,"
            f" AVG(decision = 'accepted') AS rate FROM proposals {where} GROUP BY tick ORDER BY tick",
            params,
        )

    def agent_summary(self) -> list[dict[str, Any]]:
        """Per agent: proposals, accepted, rejected, acceptance rate (a reputation proxy), mean quality, last tick."""
        return self.query(
            "SELECT agent, COUNT(*) AS proposals, SUM(decision = 'accepted') AS accepted,"
            " SUM(decision = 'rejected') AS rejected, AVG(decision = 'accepted') AS acceptance_rate,"
            " AVG(quality) AS mean_quality, MAX(tick) AS last_tick"
            " FROM proposals GROUP BY agent ORDER BY agent"
        )

    def rejection_reasons(self) -> list[dict[str, Any]]:
        """How often each rejection reason occurred, most frequent first."""
        return self.query(
            "SELECT reason, COUNT(*) AS n FROM proposals WHERE decision = 'rejected'"
            " GROUP BY reason ORDER BY n DESC, reason"
        )

    def quality_gain(self) -> list[dict[str, Any]]:
        """Per agent and task type: mean query quality before and after learning, and the gain."""
        return self.query(
            "SELECT agent, task_type, AVG(CASE WHEN phase = 'before' THEN quality END) AS before,"
            " AVG(CASE WHEN phase = 'after' THEN quality END) AS after,"
            " AVG(CASE WHEN phase = 'after' THEN quality END) - AVG(CASE WHEN phase = 'before' THEN quality END) AS gain"
            " FROM scores GROUP BY agent, task_type ORDER BY agent, task_type"
        )

    def latest_checkpoint(self) -> dict[str, Any] | None:
        """The most recent checkpoint row, or None."""
        rows = self.query("SELECT tick, path, sha256, created_at FROM checkpoints ORDER BY tick DESC, id DESC LIMIT 1")
        return rows[0] if rows else None

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Events in order, ``detail`` decoded; only those of ``kind`` when given."""
        where, params = ("WHERE kind = ?", (kind,)) if kind else ("", ())
        rows = self.query(f"SELECT tick, kind, detail FROM events {where} ORDER BY id", params)
        return [r | {"detail": json.loads(r["detail"])} for r in rows]
