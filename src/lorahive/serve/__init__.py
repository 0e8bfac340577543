"""``lorahive serve``: an OpenAI-compatible HTTP service over a run's hive (docs/serving.md).

``engine``: the one decode worker that owns the model (mixed-agent continuous batching,
feedback written to the ledger and turned into learning between decode steps); ``decode``:
one greedy step over rows of many agents; ``protocol``: the OpenAI request and response
shapes; ``app``: the FastAPI routes; ``load``: a run directory opened for serving.
"""

from lorahive.serve.app import create_app
from lorahive.serve.engine import Engine, ServeError, Settings

__all__ = ["Engine", "ServeError", "Settings", "create_app"]
