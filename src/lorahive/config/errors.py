"""The error a bad configuration raises, and the one formatter of pydantic's errors.

Every message names the bad field by its dotted path (``agent.fast_steps``,
``aggregation.trim``) so a user can find it in the YAML file or the override.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError

__all__ = ["ConfigError", "clip", "format_config_error"]

#: Most values and characters an error message echoes back from the input.
MAX_ECHO_ITEMS, MAX_ECHO_CHARS = 5, 200


def clip(values: Sequence[object]) -> str:
    """``a, b, c, … (N more)``: at most a few values, each cut short, of a list from the input."""
    shown = ", ".join(str(v)[:40] for v in values[:MAX_ECHO_ITEMS])
    more = len(values) - MAX_ECHO_ITEMS
    return shown + (f", … ({more} more)" if more > 0 else "")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names each bad field."""


def format_config_error(err: ValidationError, prefix: str = "") -> str:
    """One line per bad field: ``aggregation.trim: Input should be less than 0.5 (got 0.7)``.

    ``prefix`` is the dotted path of the section that was validated (empty for a whole run
    config). Inputs that are sections themselves (dicts, lists) are not echoed.
    """
    lines = []
    for e in err.errors():
        loc = (prefix, *e["loc"]) if prefix else e["loc"]
        field = ".".join(str(x) for x in loc) or "config"
        got = f" (got {repr(e['input'])[:MAX_ECHO_CHARS]})" if "input" in e and not isinstance(e["input"], dict | list) else ""
        lines.append(f"{field[:MAX_ECHO_CHARS]}: {e['msg'].removeprefix('Value error, ')[: 4 * MAX_ECHO_CHARS]}{got}")
    return "\n".join(lines)
