"""The generated reference in docs/CONFIGURATION.md (`python -m common.reference`): the committed text is
what the declarations say, the check names a stale section, and the error table agrees with the one HTTP
mapping of common/errors.py."""
from __future__ import annotations

import subprocess
import sys

import pytest

from common import errors
from common.metrics import Metrics, error_codes
from common.reference import DOC, SECTIONS, apply, render_sections, stale_sections
from configuration import settings as settings_module
from tests.support import REPO


def test_committed_reference_is_current():
    stale = stale_sections(DOC.read_text(encoding="utf-8"), render_sections())
    assert stale == [], f"docs/CONFIGURATION.md: stale generated section(s) {stale}: run python -m common.reference"


def test_a_setting_added_without_regenerating_fails_until_regenerated(monkeypatch):
    doc = DOC.read_text(encoding="utf-8")
    monkeypatch.setitem(settings_module._ENV, "DEMO_SETTING", ("bind_host", str, "A setting added for this test."))
    sections = render_sections()
    assert stale_sections(doc, sections) == ["settings"]
    regenerated = apply(doc, sections)
    assert stale_sections(regenerated, sections) == []
    assert "| `DEMO_SETTING` | `127.0.0.1` | A setting added for this test. |" in regenerated
    # only the generated text changed: everything outside the markers is kept
    assert regenerated.replace("| `DEMO_SETTING` | `127.0.0.1` | A setting added for this test. |\n", "") == doc


def test_check_command_names_the_stale_section_and_regenerating_fixes_it(tmp_path):
    doc = DOC.read_text(encoding="utf-8")
    copy = tmp_path / "CONFIGURATION.md"
    copy.write_text(doc.replace("| `ourvidz_jobs_running` |", "| `ourvidz_jobs_running_renamed` |"),
                    encoding="utf-8")
    command = [sys.executable, "-m", "common.reference", "--doc", str(copy)]
    check = subprocess.run([*command, "--check"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert check.returncode == 1
    assert "generated section 'metrics' is stale" in check.stderr
    assert "'settings'" not in check.stderr
    subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    assert copy.read_text(encoding="utf-8") == doc
    again = subprocess.run([*command, "--check"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr


def test_check_refuses_a_document_without_markers(tmp_path):
    copy = tmp_path / "CONFIGURATION.md"
    copy.write_text(DOC.read_text(encoding="utf-8").replace("<!-- end generated:errors -->", ""), encoding="utf-8")
    check = subprocess.run([sys.executable, "-m", "common.reference", "--check", "--doc", str(copy)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 1
    assert "no markers for the generated section(s) errors" in check.stderr


def test_every_setting_and_alias_is_in_the_generated_table():
    table = render_sections()["settings"]
    for name in settings_module.documented_variables():
        assert f"`{name}`" in table
    assert "`SUPABASE_SERVICE_KEY` (alias `SUPABASE_SERVICE_ROLE_KEY`)" in table
    assert "| `PLACEHOLDER_MODELS_DIR` | `<repo>/.cache/placeholder-models` |" in table  # same on every checkout


def test_every_job_type_is_in_the_generated_table_and_a_listed_alias_runs_as_its_base():
    """The job-types section lists each preset once: in the table, or under it as `alias` = `base` when the
    alias only renames its base (same worker, output, defaults and modes); the collapse must never hide a
    difference."""
    import re

    from common.reference import _preset_row
    from configuration import job_types

    section = render_sections()["job-types"]
    types = job_types()
    collapsed = dict(re.findall(r"`(\w+)` = `(\w+)`", section))
    for name, preset in types.items():
        assert f"`{name}`" in section, name
        if name in collapsed:
            base = collapsed[name]
            assert preset["base_type"] == base
            assert _preset_row(name, preset)[0][1:] == _preset_row(base, types[base])[0][1:], name
            assert _preset_row(name, preset)[1] == _preset_row(base, types[base])[1], name
            assert f"| `{name}` |" not in section
    assert collapsed, "no alias is collapsed: the section's format changed; update this test with it"


def test_every_metric_of_the_registry_is_listed():
    table = render_sections()["metrics"]
    registry = Metrics("reference-test").registry
    names = {family.name for family in registry.collect() if family.name.startswith("ourvidz_")}
    assert names, "the registry has ourvidz_ metrics"
    for name in names:  # collect() names counters without `_total`, info without `_info`
        assert f"`{name}" in table, name
    assert "| `ourvidz_jobs_finished_total` | counter | worker, type, status |" in table


def test_every_error_code_is_declared_once_with_a_meaning():
    constants = {value for name, value in vars(errors).items() if name.isupper() and isinstance(value, str)}
    assert constants == set(errors.CODES), "common/errors.py: a code constant without its CODES entry, or the reverse"
    assert all(ref.meaning and ref.http for ref in errors.CODES.values())
    assert error_codes() == frozenset(errors.CODES) | {"unknown"}


def _allows(http: str, status: int) -> bool:
    tokens = [t.strip() for t in http.split(",")]
    return str(status) in tokens or f"{status // 100}xx" in tokens or "other" in tokens


@pytest.mark.parametrize("exc", [
    errors.JobFailed("x"), errors.JobIdConflict("x"), errors.ContentPolicyRefused("sexual_explicit", "prompt", "sfw"),
    errors.ModelBusy("x"), errors.MemoryUnavailable("x", too_big=True),
    errors.MemoryUnavailable("x", broker_unreachable=True), errors.Unavailable("x"), errors.WorkerUnavailable("x"),
    errors.WorkerRefused(400, errors.WORKER_ERROR, "x"), errors.WorkerRefused(502, errors.WORKER_ERROR, "x"),
    errors.DomainError("x"),
], ids=lambda e: f"{type(e).__name__}-{e.code}")
def test_declared_http_status_matches_the_mapping(exc):
    answer = errors.http_error(exc)
    assert _allows(errors.CODES[answer.code].http, answer.status), (answer.code, answer.status)


def test_werkzeug_statuses_match_the_declared_codes():
    for status, code in errors._HTTP_CODES.items():
        assert _allows(errors.CODES[code].http, status), (code, status)


def test_sections_name_their_source():
    assert set(SECTIONS) == {"settings", "job-types", "errors", "metrics"}
    doc = DOC.read_text(encoding="utf-8")
    for name, (source, _render) in SECTIONS.items():
        assert f"<!-- generated:{name} from {source} by `python -m common.reference`" in doc
