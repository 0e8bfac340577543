"""``lorahive serve``: an OpenAI-compatible HTTP service over a run's hive (docs/serving.md).

``engine``: the one decode worker that owns the model (mixed-agent continuous batching,
feedback written to the ledger and turned into learning between decode steps); ``decode``:
one greedy step over rows of many agents; ``protocol``: the OpenAI request and response
shapes; ``app``: the FastAPI routes; ``load``: a run directory opened for serving;
``feedback``: what a feedback event teaches (corrections, rewards); ``swarm_feed``: serve ticks,
feedback into swarm proposals; ``durable``: the server's checkpoints and crash recovery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lorahive.serve.app import create_app
    from lorahive.serve.engine import Engine, ServeError, Settings

__all__ = ["Engine", "ServeError", "Settings", "create_app"]

_HOME = {"create_app": "lorahive.serve.app", "Engine": "lorahive.serve.engine", "ServeError": "lorahive.serve.engine", "Settings": "lorahive.serve.engine"}


def __getattr__(name: str) -> Any:
    """Load FastAPI only when the service is used: ``lorahive keys`` and every other command import ``serve.keys`` alone."""
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'lorahive.serve' has no attribute {name!r}")
