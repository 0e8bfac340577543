"""Structured logs of ``lorahive serve --log-json``: one JSON object per line on stderr.

Every record of the ``lorahive.serve`` logger becomes ``{"time", "level", "message", ...}`` plus
the fields the server attaches: ``event: "completion"`` (``id``, ``agent``, ``prompt_tokens``,
``completion_tokens``, ``finish``, ``seconds`` from request to last token) and ``event:
"feedback"`` (``feedback_id``, ``agent``, ``steps``, ``loss``, ``source``, ``replay``, ``seconds``
of learning, ``lag_seconds`` from request to learning done); errors carry ``exception``.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

__all__ = ["JsonFormatter", "use_json_logs"]

_STANDARD = set(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON: time (UTC, ISO 8601), level, message and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


JsonFormatter.converter = __import__("time").gmtime  # type: ignore[assignment]


def use_json_logs(level: int = logging.INFO, stream: Any = None) -> logging.Handler:
    """Send the ``lorahive.serve`` logger's records to ``stream`` (stderr) as JSON lines; returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("lorahive.serve")
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler
