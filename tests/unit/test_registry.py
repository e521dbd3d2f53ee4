"""The worker registry (workers/registry.py) and configuration/workers.json describe the same workers: each
configured worker has its engine class, an engine serves the worker it is registered for, and a worker
runs jobs (has a request schema, so POST /generate and a job runner) exactly when its engine is a job
engine. WorkerState refuses to start a worker whose configuration and engine disagree."""
from __future__ import annotations

import pytest

from configuration import ConfigurationError, worker_configs
from configuration.settings import Settings
from tests.standin_engine import StandInEngine
from workers.engines.base import JobEngineBase
from workers.registry import WORKERS, worker_code
from workers.runtime.worker_state import _check_runs_jobs


def test_every_configured_worker_is_registered_and_no_other():
    assert sorted(WORKERS) == sorted(worker_configs())


@pytest.mark.parametrize("worker", sorted(WORKERS))
def test_an_engine_serves_the_worker_it_is_registered_for(worker):
    assert worker_code(worker).engine.worker == worker


@pytest.mark.parametrize("worker", sorted(WORKERS))
def test_a_worker_runs_jobs_exactly_when_its_engine_is_a_job_engine(worker):
    runs_jobs = issubclass(worker_code(worker).engine, JobEngineBase)
    assert runs_jobs == bool(worker_configs()[worker]["request_schema"])


def test_only_the_chat_worker_has_routes_of_its_own():
    assert {name for name, code in WORKERS.items() if code.routes is not None} == {"chat"}
    routes = WORKERS["chat"].routes
    assert routes is not None
    assert "/v1/chat/completions" in routes.table


def test_an_unknown_worker_has_no_code():
    with pytest.raises(ConfigurationError, match=r"^no engine is registered for worker 'flux'"):
        worker_code("flux")


def test_a_request_schema_needs_an_engine_that_runs_jobs():
    """The stand-in engine has no `run` nor `check_request`: not a JobEngine, so it may serve only a worker
    without a request schema."""
    engine = StandInEngine(Settings())
    _check_runs_jobs("chat", None, engine)
    with pytest.raises(ConfigurationError, match=r"^worker 'sdxl' has request_schema 'sdxl.generate' .* "
                                                 r"its engine StandInEngine runs no jobs$"):
        _check_runs_jobs("sdxl", "sdxl.generate", engine)


class _JobStandIn(StandInEngine):
    """The stand-in with the rest of a JobEngine's methods (the warm-up, the job-only ones), never called here."""

    def warm_up(self, model: str) -> None:
        raise AssertionError("not warmed up by these tests")

    def warm_up_working_bytes(self, model: str) -> int:
        return 0

    def check_request(self, params) -> None:
        return None

    def run(self, params, ctx):
        raise AssertionError("not run by these tests")


def test_a_worker_without_a_request_schema_needs_an_engine_that_runs_none():
    engine = _JobStandIn(Settings())
    _check_runs_jobs("sdxl", "sdxl.generate", engine)
    with pytest.raises(ConfigurationError, match=r"^worker 'chat' has request_schema None .* "
                                                 r"its engine _JobStandIn runs jobs$"):
        _check_runs_jobs("chat", None, engine)
