"""diffusers' and transformers' logging is set up as each library is imported (workers/http/app.py,
`after_import`), so a worker imports neither before its engine needs it: a chat worker never imports
diffusers (whose import brings torch._dynamo), and no worker imports it before its first model load."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import REPO
from workers.http.app import _AfterImport, after_import


@pytest.fixture
def package(tmp_path, monkeypatch, request):
    """A package of this test's own, `<name>.sub` setting VALUE = 1; removed from sys.modules afterwards."""
    name = f"after_import_{request.node.name.split('[')[0][-20:]}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / name / "sub.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]
    sys.meta_path[:] = [f for f in sys.meta_path if not (isinstance(f, _AfterImport) and f.name.startswith(name))]


def test_the_action_runs_once_right_after_the_module_has_run(package):
    import importlib

    seen = []
    after_import(f"{package}.sub", lambda module: seen.append(module.VALUE))
    assert seen == []
    module = importlib.import_module(f"{package}.sub")
    assert seen == [1]  # after the module's code ran, before the import returned
    importlib.import_module(f"{package}.sub")
    assert seen == [1]
    assert not any(isinstance(f, _AfterImport) for f in sys.meta_path)  # the finder took itself off
    assert module.VALUE == 1


def test_a_module_already_imported_gets_the_action_at_once(package):
    import importlib

    importlib.import_module(f"{package}.sub")
    seen = []
    after_import(f"{package}.sub", lambda module: seen.append(module.__name__))
    assert seen == [f"{package}.sub"]


def test_a_second_wait_for_the_same_module_adds_no_second_finder(package):
    import importlib

    seen = []
    after_import(f"{package}.sub", lambda module: seen.append("first"))
    after_import(f"{package}.sub", lambda module: seen.append("second"))
    assert sum(isinstance(f, _AfterImport) and f.name == f"{package}.sub" for f in sys.meta_path) == 1
    importlib.import_module(f"{package}.sub")
    assert seen == ["first"]


def test_an_unknown_module_still_fails_to_import(package):
    after_import(f"{package}.missing", lambda module: None)
    with pytest.raises(ModuleNotFoundError):
        __import__(f"{package}.missing")


CHILD = """
import json, logging, sys
from pathlib import Path
from configuration.settings import Settings
from workers.http.app import create_app
create_app("chat", Settings(placeholder_models_dir=Path(sys.argv[1]), output_dir=Path(sys.argv[2]), api_key="k" * 32))
before = {m: m in sys.modules for m in ("diffusers", "transformers", "torch._dynamo")}
import diffusers.utils.logging as d
import transformers.utils.logging as t
after = {name: {"progress_bar": lib.is_progress_bar_enabled(),
                "propagate": logging.getLogger(name).propagate,
                "handlers": len(logging.getLogger(name).handlers)}
         for name, lib in (("diffusers", d), ("transformers", t))}
print(json.dumps({"imported_at_start": before, "after_import": after}))
"""


def test_a_chat_worker_starts_without_diffusers_and_each_library_logs_through_ours_once_imported(
        placeholder_dir, tmp_path):
    """A fresh interpreter (this one has imported both libraries already)."""
    result = subprocess.run([sys.executable, "-c", CHILD, str(placeholder_dir), str(tmp_path / "out")], cwd=REPO,
                            capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["imported_at_start"] == {"diffusers": False, "transformers": False, "torch._dynamo": False}
    for library, state in report["after_import"].items():
        assert state == {"progress_bar": False, "propagate": True, "handlers": 0}, (library, state)
