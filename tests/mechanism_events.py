"""Synthetic ledgers with the mechanisms' events (health, bandwidth, screening, inertia, replay).

The shapes are those the mechanisms record (kind ``mechanism:<name>``, detail with
``action``); the numbers are made up so that every status and a bypass migration occur.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorahive.observe.health_bands import metric_status, worst
from lorahive.observe.ledger import Ledger

LEVELS = ("swarm", "agent", "context")
CHANNELS = ("context→agent", "agent→swarm", "swarm→domain")


def health_detail(tick: int) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "entropy_ratio": {
            "swarm": 1.0 - 0.05 * tick,
            "agent": 1.1,
            "context": None if tick == 1 else 0.9,
        },
        "queue_depth": {"context→agent": 4 * tick, "agent→swarm": 2, "swarm→domain": 0},
        "wait_time": {"context→agent": 1.5 * tick, "agent→swarm": 1.0, "swarm→domain": 0.0},
        "rejection_rate": 0.0 if tick < 4 else 0.02,
        "fast_track_rate": None if tick < 3 else 0.1,
        "conflict_rate": 0.004,
    }
    status = {m: metric_status(m, v) for m, v in metrics.items()}
    return {
        "action": "health",
        "metrics": metrics,
        "status": status,
        "overall": worst(status.values()),
    }


def migration(channel: str, bypass: bool = False, slot: int = 0) -> dict[str, Any]:
    source, target = channel.split("→")
    return {
        "channel": channel,
        "source": source,
        "target": target,
        "slot": slot,
        "agent": "agent0" if source in ("context", "agent") else None,
        "autocorr": 0.8,
        "params": 128,
        "bypass": bypass,
        "waited": 0 if bypass else 3,
        "truncation": 0.05,
    }


def record_mechanisms(ledger: Ledger, ticks: int = 5) -> None:
    """``ticks`` ticks of health, screening, inertia and replay events; migrations at 2 and 4."""
    migrations = {
        2: [migration("context→agent"), migration("context→agent", bypass=True, slot=1)],
        4: [migration("context→agent"), migration("agent→swarm")],
    }
    for t in range(1, ticks + 1):
        with ledger.transaction():
            ledger.record_event(t, "mechanism:health", health_detail(t))
            if t in migrations:
                queued = {"context→agent": 4 * t, "agent→swarm": 2, "swarm→domain": 0}
                detail = {"action": "migrate", "migrations": migrations[t], "queued": queued}
                ledger.record_event(t, "mechanism:bandwidth", detail)
            levels = {
                lv: {"screened": 2 * t + k, "free": 8 - t, "moved": 0.01 * t * (k + 1)}
                for k, lv in enumerate(LEVELS)
            }
            ledger.record_event(t, "mechanism:screening", {"action": "decay", "levels": levels})
            inertia = {
                lv: {"inertia": 0.5 + 0.1 * k, "density": 0.1 * t, "step_size": 1e-2 / (k + 1)}
                for k, lv in enumerate(LEVELS)
            }
            ledger.record_event(t, "mechanism:inertia", {"action": "inertia", "levels": inertia})
            replay = {
                "action": "replay",
                "replayed": 2,
                "stored": t,
                "buffer": {"agents": t, "swarm": 1},
            }
            ledger.record_event(t, "mechanism:replay", replay)


def synthetic_run(run_dir: Path, ticks: int = 5, mechanisms: bool = True) -> Path:
    """A run directory with a ``metrics.json`` and a ledger (with the mechanisms' events or none)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(
        json.dumps({"method": "hive", "ticks": ticks, "finished": True})
    )
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        for t in range(1, ticks + 1):
            ledger.record_proposal(t, "agent0", "swarm", "accepted", norm=1.0)
        if mechanisms:
            record_mechanisms(ledger, ticks)
    return run_dir
