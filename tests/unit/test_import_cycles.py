"""No circles of imports between the project's modules (issue 21).

Beside tests/unit/test_architecture.py (which keeps the layers pointing down), this builds the import graph
of every module of configuration/, common/, workers/ and orchestrator/ with `ast`: each import, at module
level or inside a function (a lazy import still ties the two modules together), `if TYPE_CHECKING:` ones
included (a type named from a module above is still a dependency on it), is an edge to the module it names
(`from a.b import c` names the module `a.b.c` when that is one, else `a.b`). A strongly connected group of
two or more modules, or a module importing itself, is a circle; the test prints each with one path round it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("configuration", "common", "workers", "orchestrator")


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages (a package is its `__init__`)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The deepest project module `name` denotes (`a.b.Class` -> `a.b`), None outside the project."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(root: Path = REPO) -> dict[str, dict[str, int]]:
    """module -> {imported project module: first line importing it}."""
    modules = module_names(root)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, up level - 1 more
                    package = module.split(".") if is_package else module.split(".")[:-1]
                    package = package[:len(package) - (node.level - 1)]
                    base = ".".join([*package, *([base] if base else [])])
                targets = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                resolved = _resolve(target, modules)
                if resolved is not None and resolved not in edges:
                    edges[resolved] = node.lineno
        graph[module] = edges
    return graph


def _components(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                result.append(sorted(component))
    return result


def _path_round(component: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """One circle through the component's first module (breadth-first, so the shortest)."""
    members = set(component)
    start = component[0]
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in members or child in came_from:
                    continue
                came_from[child] = node
                if child == start:
                    path = [start]
                    while path[-1] != start or len(path) == 1:
                        path.append(came_from[path[-1]])
                    return path[::-1]
                following.append(child)
        frontier = following
    raise AssertionError(f"no circle through {start}")


def import_cycles(root: Path = REPO) -> list[str]:
    """One line per circle: the modules round it, each arrow with the line that imports."""
    graph = import_graph(root)
    lines = []
    for component in _components(graph):
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        path = _path_round(component, graph)
        steps = " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(path, path[1:], strict=False))
        lines.append(f"{len(component)} modules {component}: {steps} -> {path[-1]}")
    return lines


def test_the_graph_reads_the_project():
    graph = import_graph()
    assert len(graph) > 60
    assert "configuration.settings" in graph["common.queues"]  # module level
    assert sum(len(edges) for edges in graph.values()) > 200


def test_no_import_cycles():
    cycles = import_cycles()
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for name, body in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    return tmp_path


@pytest.mark.parametrize(("files", "members"), [
    ({"workers/a.py": "from workers.b import x\n", "workers/b.py": "def f():\n    from workers import a\n"},
     ["workers.a", "workers.b"]),
    ({"workers/http/app.py": "from workers.http import ops\n", "workers/http/__init__.py": "",
      "workers/http/ops.py": "from .app import State\n"}, ["workers.http.app", "workers.http.ops"]),
    ({"workers/r/q.py": "from ..http.app import WorkerState\n", "workers/r/__init__.py": "",
      "workers/http/__init__.py": "", "workers/http/app.py": "import workers.r.q\n"},
     ["workers.http.app", "workers.r.q"]),
    ({"common/a.py": "import common.b\n", "common/b.py": "import common.c\n",
      "common/c.py": "from common.a import y\n"},
     ["common.a", "common.b", "common.c"]),
    ({"orchestrator/a.py": "from orchestrator import a\n"}, ["orchestrator.a"]),
])
def test_a_cycle_is_found_and_named(tmp_path, files, members):
    cycles = import_cycles(_tree(tmp_path, files))
    assert len(cycles) == 1, cycles
    assert cycles[0].startswith(f"{len(members)} modules {members}:"), cycles


def test_imports_without_a_circle_pass(tmp_path):
    root = _tree(tmp_path, {"workers/a.py": "from workers.b import x\nfrom common import c\n",
                            "workers/b.py": "import json\nfrom . import c\n", "workers/c.py": "import configuration\n",
                            "common/c.py": "from configuration import settings\n", "configuration/settings.py": ""})
    assert import_cycles(root) == []
