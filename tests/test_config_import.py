"""``lorahive.config`` stays light, and the package's import graph stays acyclic.

Reading and checking a run config must not pay for torch (seconds): the CLI validates a
config before anything heavy loads, and tools read configs without a model. The graph test
parses every module with ``ast`` (imports inside functions count; those under
``if TYPE_CHECKING:`` do not, they never run) and checks the rules the layout rests on.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "lorahive"

#: Besides lorahive.runtime itself, only the CLI (``cli``), the service (``serve``, a floor above runtime) and the facade may import it.
RUNTIME_USERS = ("lorahive",)

PROBE = """
import json, sys
import lorahive.config
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers") or m.startswith("lorahive.runtime"))
print(json.dumps({"heavy": heavy}))
"""


def _probe() -> dict:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True, timeout=60)
    return json.loads(out.stdout)


def test_import_config_is_light():
    """Validating a config loads no heavy library (torch, transformers, ...); how long it takes is a benchmark's business, not a test's."""
    probe = _probe()
    assert probe["heavy"] == [], f"import lorahive.config loaded {probe['heavy']}"


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


MODULES = _module_names()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _nodes(node: ast.AST):
    """Every node under ``node`` except the bodies of ``if TYPE_CHECKING:`` blocks."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _nodes(other)
            continue
        yield child
        yield from _nodes(child)


def _imports(name: str, path: Path) -> set[str]:
    """The lorahive modules that module ``name`` imports at run time."""
    found = set()
    for node in _nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lorahive"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            if base.split(".")[0] == "lorahive":
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _part(module: str) -> str:
    """The top-level part a module belongs to: ``runtime``, ``config``, ``base``, or ``lorahive``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "lorahive"


def _part_graph() -> dict[str, set[str]]:
    """Which top-level parts import which (the root ``lorahive/__init__`` left out: it is the facade)."""
    graph: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        if module == "lorahive":
            continue
        for target in targets:
            a, b = _part(module), _part(target)
            if a != b and b != "lorahive":
                graph.setdefault(a, set()).add(b)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_graph_sees_the_known_edges():
    # guards the parser: if it silently found nothing, the rules below would pass vacuously
    assert "lorahive.config.levels" in GRAPH["lorahive.config.run"]
    assert "lorahive.runtime.stream" in GRAPH["lorahive.runtime.run"]  # from lorahive.runtime.stream import method_stack
    assert "lorahive.runtime.hive" in GRAPH["lorahive"]  # inside the lazy __getattr__
    assert {"adapters", "base", "cli", "mechanisms", "runtime", "suites"} <= set(_part_graph())


def test_no_cycle_between_top_level_parts():
    assert _cycles(_part_graph()) == []


def test_config_imports_nothing_else_from_lorahive():
    outside = {(m, t) for m, ts in GRAPH.items() if _part(m) == "config" for t in ts if _part(t) != "config"}
    assert outside == set()


def test_only_the_cli_the_service_the_implant_tools_and_the_facade_import_runtime():
    # implant/ is a user of the Hive facade, as the service is: nothing in the tick imports it
    users = {m for m, ts in GRAPH.items() if _part(m) != "runtime" and any(_part(t) == "runtime" for t in ts)}
    assert users <= {m for m in MODULES if m in RUNTIME_USERS or _part(m) in ("cli", "serve", "implant")}, sorted(users)


def test_nothing_in_the_tick_imports_the_implant_tools():
    users = {m for m, ts in GRAPH.items() if _part(m) not in ("implant", "cli") and m not in RUNTIME_USERS and any(_part(t) == "implant" for t in ts)}
    assert users == set(), sorted(users)


def test_nothing_below_the_service_imports_it():
    users = {m for m, ts in GRAPH.items() if _part(m) not in ("serve", "cli") and any(_part(t) == "serve" for t in ts)}
    assert users == set(), sorted(users)
