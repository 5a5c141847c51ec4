"""The shape of the package's imports: no module imports itself back through others, and
imports flow one way, ``adapters -> storage -> core`` and ``adapters -> core`` (DESIGN.md).

The imports are read from the source with ``ast``, not by importing anything: every import
statement counts, also one inside a function (a lazy import still ties two modules together)
and one under ``if TYPE_CHECKING:``. ``from .pkg import name`` counts as an import of the module
``pkg.name`` when there is one, else of ``pkg``. A package's ``__init__`` running when one of
its modules is imported is not counted: every module would otherwise import its parents.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Collection, Iterator, Mapping
from itertools import pairwise
from pathlib import Path

import pytest

PACKAGE = "devs.risks.multi_model_failover"
SOURCE = Path(__file__).resolve().parents[1] / "src"
# What each layer must not import.
FORBIDDEN: dict[str, set[str]] = {"core": {"storage", "adapters"}, "storage": {"adapters"}}

# module -> {module it imports: line of the first such import}
Graph = dict[str, dict[str, int]]


def find_modules(source: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under the folder ``source``, by dotted name."""
    found = {}
    for path in sorted((source / package.replace(".", "/")).rglob("*.py")):
        parts = path.relative_to(source).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph(source: Path, package: str) -> Graph:
    """Which modules of ``package`` each of its modules imports, and on which line."""
    modules = find_modules(source, package)
    graph: Graph = {}
    for module, path in modules.items():
        edges = graph.setdefault(module, {})
        for name, line in imported_names(path, module):
            target = nearest_module(name, modules)
            if target is not None and target != module:
                edges.setdefault(target, line)
    return graph


def imported_names(path: Path, module: str) -> Iterator[tuple[str, int]]:
    """The absolute names each import statement of ``path`` may bring in, with its line.

    ``from .x import a`` gives ``pkg.x.a`` (``a`` may be a module) and ``nearest_module``
    falls back to ``pkg.x`` when it is not."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = absolute_base(node, module, is_package=path.name == "__init__.py")
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def absolute_base(node: ast.ImportFrom, module: str, *, is_package: bool) -> str:
    """The absolute module name of ``from <base> import ...`` written in ``module``."""
    if node.level == 0:
        return node.module or ""
    # A relative import starts from the importing module's package; each extra dot goes up one.
    parts = (module if is_package else module.rpartition(".")[0]).split(".")
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, node.module] if node.module else parts)


def nearest_module(name: str, modules: Collection[str]) -> str | None:
    """``name`` if it is one of ``modules``, else the closest enclosing one, else None."""
    parts = name.split(".")
    while parts:
        if (candidate := ".".join(parts)) in modules:
            return candidate
        parts.pop()
    return None


def import_cycles(graph: Mapping[str, Collection[str]]) -> list[list[str]]:
    """Import cycles as ``[a, b, ..., a]``: the shortest one through each module in a cycle,
    skipping a module already shown in an earlier cycle."""
    cycles: list[list[str]] = []
    shown: set[str] = set()
    for start in sorted(graph):
        if start not in shown and (cycle := shortest_cycle(graph, start)):
            cycles.append(cycle)
            shown.update(cycle)
    return cycles


def shortest_cycle(graph: Mapping[str, Collection[str]], start: str) -> list[str]:
    """The shortest import path from ``start`` back to itself (breadth first), or []."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in sorted(graph.get(node, ())):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if target not in came_from:
                came_from[target] = node
                queue.append(target)
    return []


def layer_of(module: str, package: str) -> str:
    """``core``, ``storage`` or ``adapters`` (the folder right under the package); ``""`` for
    the package itself."""
    return module[len(package) + 1 :].partition(".")[0]


def layer_violations(graph: Graph, package: str, layer: str) -> list[str]:
    """Each import from a module of ``layer`` into a layer it must not import."""
    forbidden = FORBIDDEN.get(layer, set())
    return [
        f"{short(module, package)} imports {short(target, package)} (line {line})"
        for module, edges in sorted(graph.items())
        if layer_of(module, package) == layer
        for target, line in sorted(edges.items())
        if layer_of(target, package) in forbidden
    ]


def describe_cycle(cycle: list[str], graph: Graph, package: str) -> str:
    """``a -> b -> a`` and, below it, the line of each of those imports."""
    steps = [
        f"    {short(a, package)} imports {short(b, package)} (line {graph[a][b]})"
        for a, b in pairwise(cycle)
    ]
    return "\n".join([" -> ".join(short(m, package) for m in cycle), *steps])


def short(module: str, package: str) -> str:
    """The module's name inside the package (``core.engine``)."""
    return module.removeprefix(f"{package}.")


# -- the package -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(SOURCE, PACKAGE)


def test_the_graph_sees_the_package(graph: Graph) -> None:
    # A checker that reads nothing passes everything: make sure it reads the real package.
    assert {"core", "storage", "adapters"} <= {layer_of(m, PACKAGE) for m in graph}
    assert f"{PACKAGE}.core.events" in graph[f"{PACKAGE}.storage.sqlite"]


def test_no_import_cycles(graph: Graph) -> None:
    cycles = import_cycles(graph)
    report = "\n".join(describe_cycle(cycle, graph, PACKAGE) for cycle in cycles)
    assert not cycles, f"import cycles (each module imports the next):\n{report}"


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_flow_one_way(graph: Graph, layer: str) -> None:
    violations = layer_violations(graph, PACKAGE, layer)
    allowed = f"{layer} must not import {' or '.join(sorted(FORBIDDEN[layer]))}"
    assert not violations, f"{allowed}:\n  " + "\n  ".join(violations)


# -- the checker itself, on small made-up packages ----------------------------------------------


# A room of one size: a core module that outgrows this is two concerns in one file.
CORE_MOST_LINES = 400


def test_no_core_module_outgrows_its_room() -> None:
    core = SOURCE / PACKAGE.replace(".", "/") / "core"
    sizes = {path.name: len(path.read_text().splitlines()) for path in core.glob("*.py")}
    assert sizes  # the folder is where the test thinks it is
    too_big = {name: lines for name, lines in sizes.items() if lines > CORE_MOST_LINES}
    assert not too_big, f"core modules over {CORE_MOST_LINES} lines: {too_big}"


def test_a_cycle_is_found_and_shown_as_a_path() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}, "e": {"e": 5}}
    assert import_cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
    assert describe_cycle(["a", "b", "c", "a"], graph, "pkg") == (
        "a -> b -> c -> a\n"
        "    a imports b (line 1)\n"
        "    b imports c (line 2)\n"
        "    c imports a (line 3)"
    )
    assert import_cycles({"a": {"b": 1}, "b": {"c": 2}, "c": {}}) == []


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_a_lazy_relative_import_across_layers_is_caught(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/core/__init__.py": "",
            "pkg/core/engine.py": (
                "from . import events\n"
                "def run():\n"
                "    from ..adapters.cli import render\n"  # lazy, two levels up
            ),
            "pkg/core/events.py": "import json\n",
            "pkg/storage/__init__.py": "from pkg.core.events import x\n",
            "pkg/adapters/__init__.py": "",
            "pkg/adapters/cli/__init__.py": "",
            "pkg/adapters/cli/render.py": "from ...core import engine\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph == {
        "pkg": {},
        "pkg.core": {},
        "pkg.core.engine": {"pkg.core.events": 1, "pkg.adapters.cli.render": 3},
        "pkg.core.events": {},
        "pkg.storage": {"pkg.core.events": 1},
        "pkg.adapters": {},
        "pkg.adapters.cli": {},
        "pkg.adapters.cli.render": {"pkg.core.engine": 1},
    }
    assert layer_violations(graph, "pkg", "core") == [
        "core.engine imports adapters.cli.render (line 3)"
    ]
    assert layer_violations(graph, "pkg", "storage") == []
    assert import_cycles(graph) == [
        ["pkg.adapters.cli.render", "pkg.core.engine", "pkg.adapters.cli.render"]
    ]
