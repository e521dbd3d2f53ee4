"""Imports go one way: configuration <- common <- workers | orchestrator (docs/ARCHITECTURE.md).

`configuration/` imports nothing of the project, `common/` imports only configuration, and `workers/`
and `orchestrator/` import configuration and common but never each other. The imports are read with
`ast` from every module of the four packages (module level and inside functions alike), so a lazy
import inside a function breaks the rule just as a top-level one does.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("configuration", "common", "workers", "orchestrator")
# package -> the project packages it may import (besides itself)
ALLOWED = {
    "configuration": set(),
    "common": {"configuration"},
    "workers": {"configuration", "common"},
    "orchestrator": {"configuration", "common"},
}


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level project package) of every import in a module; relative imports count as their own package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside its own package
                continue
            names = [node.module or ""]
        else:
            continue
        found += [(node.lineno, name.split(".")[0]) for name in names if name.split(".")[0] in LAYERS]
    return found


def reverse_imports(root: Path = REPO) -> list[str]:
    problems = []
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            for line, imported in project_imports(path):
                if imported != package and imported not in ALLOWED[package]:
                    problems.append(f"{path.relative_to(root)}:{line} imports {imported} "
                                    f"({package} may import only "
                                    f"{sorted(ALLOWED[package]) or 'nothing of the project'})")
    return problems


def test_every_package_is_a_layer():
    assert all((REPO / package / "__init__.py").exists() for package in LAYERS)
    assert sum(1 for package in LAYERS for _ in (REPO / package).rglob("*.py")) > 40


def test_imports_point_down_only():
    assert reverse_imports() == []


@pytest.mark.parametrize(("package", "line", "bad"), [
    ("configuration", "from workers.http import chat", "imports workers"),
    ("configuration", "import orchestrator.api", "imports orchestrator"),
    ("common", "from workers.runtime.jobs import JobRunner", "imports workers"),
    ("common", "    from orchestrator import pod  # lazy", "imports orchestrator"),
    ("workers", "from orchestrator.broker_policy import plan_lease", "imports orchestrator"),
    ("orchestrator", "from workers.serve import x", "imports workers"),
])
def test_a_reverse_import_is_found(tmp_path, package, line, bad):
    for name in LAYERS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    body = f"def f():\n{line}\n" if line.startswith("    ") else f"{line}\n"
    (tmp_path / package / "module.py").write_text(body)
    problems = reverse_imports(tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{package}/module.py:")
    assert bad in problems[0]


def test_allowed_imports_pass(tmp_path):
    for name in LAYERS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / "workers" / "a.py").write_text("from common.jobs import JobRecord\nimport configuration\nfrom . import "
                                               "b\n")
    (tmp_path / "orchestrator" / "a.py").write_text("from common import errors\nimport requests\n")
    (tmp_path / "common" / "a.py").write_text("from configuration.settings import Settings\n")
    assert reverse_imports(tmp_path) == []
