"""schemathesis against every process's `/openapi.json` (issue 11): generated valid and invalid requests
for every operation, checked for server errors and for answers the document does not describe (status
codes, bodies, headers, content types), for bodies the schema forbids being accepted, for routes that
answer without the bearer key, and for 405s without `Allow`.

The session's shared pod (orchestrator + SDXL, WAN and chat workers) serves all four runs. Example counts
are bounded and the seed fixed, so the run takes a few minutes on two cores and reproduces: a failure
prints the curl command of the request that broke.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.support import API_KEY

pytestmark = pytest.mark.timeout(600)

SEED = 11
# Every check but the stateful ones (no links between operations) and positive_data_acceptance (a valid body
# may still be refused for what a schema cannot say: a job too big for the device, a model's limits).
# `all` includes max_response_time, 10 s by default: a generated chat request with a large max_tokens runs a real
# generation, which passed 10 s on a slow 2-core machine under a parallel suite (two "ST112" failures). The limit
# is the request timeout instead: an answer slower than that still fails the run.
REQUEST_TIMEOUT_S = 60
CHECKS = ["--checks", "all", "--exclude-checks",
          "positive_data_acceptance,use_after_free,ensure_resource_availability,object_level_authorization",
          "--max-response-time", str(REQUEST_TIMEOUT_S)]
# One or more runs per process. A valid chat request runs a real generation: its boundary values are sent as
# invalid requests only (coverage, negative), and a few generated valid ones go through.
RUNS = {
    "orchestrator": [["--phases", "examples,coverage,fuzzing", "--max-examples", "10"]],
    "sdxl": [["--phases", "examples,coverage,fuzzing", "--max-examples", "10"]],
    "wan": [["--phases", "examples,coverage,fuzzing", "--max-examples", "10"]],
    "chat": [["--phases", "coverage", "--mode", "negative"], ["--phases", "examples,fuzzing", "--max-examples", "4"]],
}


@pytest.fixture(scope="module")
def pod(shared_pod):
    """The session's shared pod. The generated jobs may be any size the schemas allow, so this module runs last
    on it (tests/conftest.py, SHARED_POD_MODULES): no other module's job waits behind them."""
    return shared_pod


@pytest.fixture(scope="module")
def urls(pod):
    return {"orchestrator": pod.url, **{name: info["url"] for name, info in pod.workers().items()}}


@pytest.mark.parametrize("process", list(RUNS))
def test_schemathesis_finds_no_server_error_and_no_spec_violation(pod, urls, process, tmp_path):
    for i, run in enumerate(RUNS[process]):
        command = [sys.executable, "-m", "schemathesis.cli", "run", f"{urls[process]}/openapi.json",
                   "--header", f"Authorization: Bearer {API_KEY}", *CHECKS, *run, "--seed", str(SEED),
                   "--generation-database", "none", "--request-timeout", str(REQUEST_TIMEOUT_S), "--no-color",
                   "--output-truncate", "false", "--report", "json", "--report-json-path", str(tmp_path / f"{i}.json")]
        result = subprocess.run(command, capture_output=True, text=True, timeout=540, cwd=tmp_path)
        summary = result.stdout[-12000:]
        what = f"schemathesis against {process} ({' '.join(run)})"
        assert result.returncode == 0, f"{what}:\n{summary}\n{result.stderr[-2000:]}"
        assert re.search(r"\d+ generated, \d+ passed", summary), summary  # schemathesis ran its cases
        report = json.loads((tmp_path / f"{i}.json").read_text())
        assert report, "empty schemathesis report"
        print(f"{process} {' '.join(run)}: {summary.strip().splitlines()[-1]}", file=sys.stderr)
    assert pod.proc.poll() is None, "the orchestrator died under fuzzing"
