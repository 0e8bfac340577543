"""Constants the configs default to, owned here so that the configs need no heavy module.

:mod:`lorahive.base` (model loading, torch) and :mod:`lorahive.suites.demo` (the shipped
slice) read these names from here; this is the only place they are spelled out.
"""

from __future__ import annotations

__all__ = ["DEFAULT_BASE", "DEMO_TASK_TYPES"]

#: The base model a run uses unless told otherwise: SmolLM2-135M-Instruct, shipped as a wheel.
DEFAULT_BASE = "embedded:smollm2-135m"

#: Task types of the shipped demo slice, in the order the demo presents them.
DEMO_TASK_TYPES: tuple[str, ...] = ("agnews", "dbpedia", "yahoo", "yelp")
