"""schemathesis against every process's `/openapi.json` (issue 11): generated valid and invalid requests
for every operation, checked for server errors and for answers the document does not describe (status
codes, bodies, headers, content types), for bodies the schema forbids being accepted, for routes that
answer without the bearer key, and for 405s without `Allow`.

One pod (orchestrator + SDXL, WAN and chat workers) serves all four runs. Example counts are bounded
and the seed fixed, so the run takes a few minutes on two cores and reproduces: a failure prints the
curl command of the request that broke.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import API_KEY, OrchestratorProcess, base_env, free_port

pytestmark = pytest.mark.timeout(600)

MAX_EXAMPLES = 12
SEED = 11
CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
    "ignored_auth", "unsupported_method", "allow_header_conformance", "missing_required_header",
])


@pytest.fixture(scope="module")
def pod(tmp_path_factory, placeholder_dir):
    tmp = tmp_path_factory.mktemp("fuzz")
    env = base_env(tmp, placeholder_dir, ORCHESTRATOR_PORT=free_port(), SDXL_PORT=free_port(),
                   WAN_PORT=free_port(), CHAT_PORT=free_port(), ENABLED_WORKERS="sdxl,wan,chat",
                   STATE_DIR=tmp / "state", FETCH_TIMEOUT_S=2)
    orchestrator = OrchestratorProcess(env, tmp / "orchestrator.log").start()
    orchestrator.wait_ready()
    orchestrator.urls = {"orchestrator": orchestrator.url,
                         **{name: info["url"] for name, info in orchestrator.workers().items()}}
    yield orchestrator
    orchestrator.stop()


@pytest.mark.parametrize("process", ["orchestrator", "sdxl", "wan", "chat"])
def test_schemathesis_finds_no_server_error_and_no_spec_violation(pod, process, tmp_path):
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{pod.urls[process]}/openapi.json",
               "--header", f"Authorization: Bearer {API_KEY}",
               "--checks", CHECKS, "--phases", "examples,coverage,fuzzing", "--max-examples", str(MAX_EXAMPLES),
               "--seed", str(SEED), "--generation-database", "none",
               "--request-timeout", "30", "--no-color", "--output-truncate", "false",
               "--report", "json", "--report-json-path", str(report)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=540, cwd=tmp_path)
    summary = result.stdout[-12000:]
    assert result.returncode == 0, f"schemathesis against {process}:\n{summary}\n{result.stderr[-2000:]}"
    assert "No issues found" in result.stdout or "passed" in result.stdout, summary
    if report.exists():
        data = json.loads(report.read_text())
        assert data, "empty schemathesis report"
    assert pod.proc.poll() is None, "the orchestrator died under fuzzing"
    print(summary[-1500:], file=sys.stderr)
