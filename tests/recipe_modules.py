"""The experiments' recipes (recipes/experiments/) as modules, for the tests that run or judge them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent / "recipes" / "experiments"


def recipe(name: str) -> ModuleType:
    """``recipes/experiments/<name>.py``, loaded fresh (it puts its folder on ``sys.path`` for ``common``)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
