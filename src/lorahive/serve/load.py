"""A run directory opened for serving: its hive at the last good checkpoint, and where its ledger is."""

from __future__ import annotations

from pathlib import Path

from lorahive.runtime.run import open_run
from lorahive.serve.engine import Engine, Settings


def engine_for_run(run_dir: str | Path, settings: Settings | None = None) -> Engine:
    """An (unstarted) engine over the run in ``run_dir``; the caller holds the run's lock.

    The engine checkpoints the run, replays at startup the acknowledged feedback no checkpoint
    holds, and runs serve ticks (docs/serving.md, "Durability" and "Serve ticks").
    """
    run = open_run(run_dir)
    run.swarm.ledger.close()  # the engine's thread opens its own connection
    return Engine(run.hive, Path(run_dir) / "ledger.sqlite", settings, tick=run.swarm.tick_no, run=run)
