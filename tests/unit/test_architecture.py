"""Imports go one way: configuration <- common <- workers | orchestrator (docs/ARCHITECTURE.md).

`configuration/` imports nothing of the project, `common/` imports only configuration, and `workers/`
and `orchestrator/` import configuration and common but never each other. The imports are read with
`ast` from every module of the four packages (module level and inside functions alike), so a lazy
import inside a function breaks the rule just as a top-level one does.

A string can import too ("module:Class" resolved at run time), out of sight of that check: a string
literal in configuration/ or common/ (their .py files and configuration/'s JSON files) that names a module
of workers/ or orchestrator/ breaks the rule the same way. Prose is not wiring: docstrings, and a
`python -m <module>` command shown to an operator, are not read. The one exception is gunicorn's own
syntax in common/serve.py, allowed by name below and resolved by a test of its own.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import re
from collections.abc import Iterator
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


# The layers whose module paths the lower layers may not name in strings.
UPPER = ("workers", "orchestrator")
# A dotted path from an upper layer, optionally with an import string's ":attribute".
_MODULE_PATH = re.compile(r"(?<![\w./-])((?:workers|orchestrator)(?:\.[A-Za-z_]\w*)+)(:[A-Za-z_]\w*)?")
_OPERATOR_COMMAND = re.compile(r"python3? -m $")
# (file, the path as written) -> why it may stay. gunicorn takes its config module and its app factory as
# strings in its own syntax, and common/serve.py builds the workers' command line (the orchestrator may not
# import workers/ either); test_gunicorn_targets_resolve imports both, so a rename fails there.
ALLOWED_STRINGS = {
    ("common/serve.py", "workers.gunicorn_conf"): "gunicorn --config python:<module> (WORKER_CONFIG)",
    ("common/serve.py", "workers.http.app:serve_app"): "gunicorn's app target <module>:<callable> (WORKER_APP)",
}


def _names_module(root: Path, dotted: str) -> bool:
    """Whether `workers.a.b` is a module or package under `root`."""
    path = root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _module_paths(text: str, root: Path) -> Iterator[str]:
    """Upper-layer module paths in `text`: an import string (`a.b:attr`) or a dotted path that names a module
    (`workers.json` names none), unless shown as an operator's `python -m` command."""
    for match in _MODULE_PATH.finditer(text):
        dotted, attribute = match.group(1), match.group(2)
        if _OPERATOR_COMMAND.search(text[:match.start()]):
            continue
        if attribute or _names_module(root, dotted):
            yield dotted + (attribute or "")


def _python_strings(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every string constant of a module but its docstrings (any bare string statement)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    prose = {id(node.value) for node in ast.walk(tree)
             if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            yield node.lineno, node.value


def _json_strings(value: object) -> Iterator[str]:
    """Every key and string value of a JSON document."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, child in value.items():
            yield key
            yield from _json_strings(child)
    elif isinstance(value, list):
        for child in value:
            yield from _json_strings(child)


def upper_layer_strings(root: Path = REPO) -> list[str]:
    """Strings in configuration/ and common/ that name a module of workers/ or orchestrator/."""
    found: list[tuple[str, int | None, str]] = []
    for package in ("configuration", "common"):
        for path in sorted((root / package).rglob("*.py")):
            found += [(path.relative_to(root).as_posix(), line, name)
                      for line, text in _python_strings(path) for name in _module_paths(text, root)]
    for path in sorted((root / "configuration").rglob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        found += [(path.relative_to(root).as_posix(), None, name)
                  for text in _json_strings(document) for name in _module_paths(text, root)]
    return [f"{file}{f':{line}' if line else ''} names {name!r} in a string (an import the layer check cannot see)"
            for file, line, name in found if (file, name) not in ALLOWED_STRINGS]


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
    _packages(tmp_path)
    body = f"def f():\n{line}\n" if line.startswith("    ") else f"{line}\n"
    (tmp_path / package / "module.py").write_text(body)
    problems = reverse_imports(tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{package}/module.py:")
    assert bad in problems[0]


def test_allowed_imports_pass(tmp_path):
    _packages(tmp_path)
    (tmp_path / "workers" / "a.py").write_text("from common.jobs import JobRecord\nimport configuration\nfrom . import "
                                               "b\n")
    (tmp_path / "orchestrator" / "a.py").write_text("from common import errors\nimport requests\n")
    (tmp_path / "common" / "a.py").write_text("from configuration.settings import Settings\n")
    assert reverse_imports(tmp_path) == []


def test_lower_layers_name_no_upper_module_in_strings():
    assert upper_layer_strings() == []


def test_gunicorn_targets_resolve():
    """The two allowed strings are common/serve.py's constants and name what gunicorn loads: the config module
    (found, not imported: importing it sets the process's CUDA allocator and open-files limit) and the app
    factory, called with the worker's name."""
    from common import serve

    config_module = serve.WORKER_CONFIG.removeprefix("python:")
    assert {config_module, serve.WORKER_APP} == {name for _, name in ALLOWED_STRINGS}
    assert importlib.util.find_spec(config_module) is not None
    module_name, attribute = serve.WORKER_APP.split(":")
    factory = getattr(importlib.import_module(module_name), attribute)
    assert list(inspect.signature(factory).parameters) == ["worker"]
    assert serve.gunicorn_command("wan", serve.Settings(), 1)[-1] == f"{serve.WORKER_APP}('wan')"


def _packages(root: Path) -> None:
    """An empty package per layer under `root`."""
    for name in LAYERS:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text("")


def _layers(root: Path) -> None:
    """The layers, and the upper-layer modules the planted strings name."""
    _packages(root)
    (root / "workers" / "engines").mkdir()
    (root / "workers" / "engines" / "__init__.py").write_text("")
    (root / "workers" / "engines" / "sdxl.py").write_text("")
    (root / "orchestrator" / "api.py").write_text("")


@pytest.mark.parametrize(("file", "text", "named"), [
    ("configuration/module.py", 'ENGINE = "workers.engines.sdxl:SDXLEngine"\n', "workers.engines.sdxl:SDXLEngine"),
    ("configuration/module.py", 'def f():\n    return {"http": "workers.http.chat:bp"}\n', "workers.http.chat:bp"),
    ("common/module.py", 'TARGET = f"orchestrator.api:create_app({1})"\n', "orchestrator.api:create_app"),
    ("common/module.py", 'NAME = "orchestrator.api"\n', "orchestrator.api"),
    ("configuration/workers.json", '{"sdxl": {"engine": "workers.engines.sdxl:SDXLEngine"}}', "workers.engines.sdxl"),
    ("configuration/sub/other.json", '["workers.engines.sdxl"]', "workers.engines.sdxl"),
])
def test_an_upper_layer_string_is_found(tmp_path, file, text, named):
    _layers(tmp_path)
    (tmp_path / file).parent.mkdir(exist_ok=True)
    (tmp_path / file).write_text(text)
    problems = upper_layer_strings(tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith(file)
    assert f"names '{named}" in problems[0]


def test_prose_and_other_names_pass(tmp_path):
    _layers(tmp_path)
    (tmp_path / "configuration" / "module.py").write_text(
        '"""Read by workers.engines.sdxl; see orchestrator.api."""\n'
        'HELP = "run `python -m workers.engines.sdxl` to try it"\n'
        'FILE = "configuration/workers.json, workers.json"\n'
        'SCHEMA = "orchestrator.jobs"\n'           # a schema name: no such module
        'PATH = "workers/engines/sdxl.py"\n')
    (tmp_path / "configuration" / "data.json").write_text('{"_comment": "python -m workers.engines.sdxl"}')
    assert upper_layer_strings(tmp_path) == []
