"""Durability of a served run: the server's own checkpoints, and its recovery after a crash.

The rule: **the checkpoint's ledger mark is the line.** The server writes the run's ordinary
checkpoint (:func:`~lorahive.runtime.run.save_checkpoint`: levels, optimizer state, swarm
and mechanism state, and the ledger's mark, atomically as every checkpoint) on the decode
worker, between two decode steps, when every feedback event taken in so far has been learned.
So a ``serve_feedback`` row whose id is at most the mark's ``events`` id is *applied* (its
learning is in the checkpoint), and a row above it is *queued*: not in any checkpoint.

At startup (:meth:`Keeper.recover`) the server deletes the ``serve_learn`` and ``serve_tick``
rows above the line — learning that the crash took back, with a serve tick's own proposal,
update and mechanism rows — keeps every ``serve_feedback`` row, and learns the queued ones
again, in order, before it takes a request; then it writes a checkpoint. Each acknowledged
feedback event is therefore learned exactly once in what survives, and the ledger says so:
one ``serve_learn`` row per teaching ``serve_feedback`` row (``replay: true`` when learned
again). A ``serve_start`` event records the line, what was replayed and what was deleted.

When: after every ``checkpoint_every`` learned feedback events, ``checkpoint_seconds`` after the
first change not yet saved (a learned event or a serve tick), and when the server stops.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from lorahive.observe.ledger import Ledger, sha256_of
from lorahive.runtime.run import Run, save_checkpoint
from lorahive.store import checkpoint

#: Rows a crash can take back: learning done after the last checkpoint.
LOST_KINDS = ("serve_learn", "serve_tick")


@dataclass(frozen=True)
class Queued:
    """A feedback event that teaches: its ledger row, id, agent, and the (prompt, answer) to learn."""

    row: int
    feedback_id: str
    agent: str
    prompt: str
    answer: str
    source: str


@dataclass
class Recovery:
    """What a restarted server finds in the ledger: events to learn again, examples the swarm still waits for."""

    line: int
    replay: list[Queued] = field(default_factory=list)
    waiting: list[Queued] = field(default_factory=list)
    serve_ticks: int = 0
    deleted: int = 0


def queued_from(row: dict[str, Any]) -> Queued | None:
    """The lesson of a ``serve_feedback`` ledger row, or None when it teaches nothing."""
    d = json.loads(row["detail"]) if isinstance(row["detail"], str) else row["detail"]
    if not d.get("learning"):
        return None
    answer = d["correction"] if d.get("source", "correction") == "correction" else d["answer"]
    return Queued(int(row["id"]), d["feedback_id"], d["agent"], d["prompt"], answer, d.get("source", "correction"))


class Keeper:
    """Checkpoints of a served ``run``: when one is due, writing it, and recovery at startup."""

    def __init__(self, run: Run, every: int, seconds: float) -> None:
        if every < 1 or seconds <= 0:
            raise ValueError(f"checkpoint_every must be ≥ 1 and checkpoint_seconds > 0, got {every} and {seconds}")
        self.run, self.every, self.seconds = run, every, seconds
        self.learned = 0  # feedback events learned since the last checkpoint
        self.first_change: float | None = None  # when the oldest unsaved change happened
        self.saves, self.save_seconds = 0, 0.0

    # ------------------------------------------------------------------ at startup
    def recover(self, ledger: Ledger) -> Recovery:
        """Take ``ledger`` as the run's (opened on the worker thread), delete what a crash took back, list what to replay."""
        run = self.run
        run.swarm.ledger = ledger
        line = int(run.mark["max_ids"].get("events", 0)) if run.mark is not None else 0
        rec = Recovery(line)
        with ledger.transaction():
            for r in ledger.query(f"SELECT id, kind, detail FROM events WHERE id > ? AND kind IN ({', '.join('?' * len(LOST_KINDS))}) ORDER BY id", (line, *LOST_KINDS)):
                for table, (first, last) in json.loads(r["detail"]).get("rows", {}).items():
                    rec.deleted += ledger.forget(table, int(first), int(last), keep_kinds=("serve_feedback",))
                rec.deleted += ledger.forget("events", int(r["id"]), int(r["id"]))
            ticks = [json.loads(r["detail"]) for r in ledger.query("SELECT detail FROM events WHERE kind = 'serve_tick' ORDER BY id")]
            through = max((int(t["through"]) for t in ticks), default=0)
            rec.serve_ticks = len(ticks)
            for r in ledger.query("SELECT id, detail FROM events WHERE kind = 'serve_feedback' AND id > ? ORDER BY id", (through,)):
                q = queued_from(r)
                if q is None:
                    continue
                rec.waiting.append(q)  # through <= line: a surviving serve tick lies below the line
                if q.row > line:
                    rec.replay.append(q)
            self._record_missing_checkpoint(ledger)
            ledger.record_event(run.swarm.tick_no, "serve_start", {
                "line": line, "replayed": [q.feedback_id for q in rec.replay], "rows_deleted": rec.deleted,
                "waiting_for_swarm": len(rec.waiting), "serve_ticks": rec.serve_ticks,
            })  # fmt: skip
        return rec

    def _record_missing_checkpoint(self, ledger: Ledger) -> None:
        """A server killed after writing a checkpoint but before its ledger row gets the row now."""
        ckpt = checkpoint.locate(self.run.out)
        digest = sha256_of(ckpt / "manifest.json")
        last = ledger.latest_checkpoint()
        if last is None or last["sha256"] != digest:
            ledger.record_checkpoint(self.run.swarm.tick_no, self.run.out / checkpoint.NAME, digest)

    # ------------------------------------------------------------------ while serving
    def changed(self, learned: bool = True) -> None:
        """One change not yet in a checkpoint: a learned feedback event, or (``learned=False``) a serve tick
        or a feedback event that teaches nothing (a checkpoint puts it below the line, so a tick loop may resume)."""
        self.learned += int(learned)
        if self.first_change is None:
            self.first_change = time.monotonic()

    def wait(self) -> float | None:
        """Seconds until a timed checkpoint is due (0: now), or None when nothing is unsaved."""
        if self.first_change is None:
            return None
        return max(0.0, self.first_change + self.seconds - time.monotonic())

    def due(self) -> bool:
        return self.learned >= self.every or self.wait() == 0.0

    def save(self) -> float:
        """Write the checkpoint now (on the worker thread, every learned event in it); returns its seconds."""
        t = time.perf_counter()
        self.run.started = time.time()  # serving time is not the run's learning time: its elapsed stays
        save_checkpoint(self.run)
        self.learned, self.first_change = 0, None
        seconds = time.perf_counter() - t
        self.saves += 1
        self.save_seconds += seconds
        return seconds
