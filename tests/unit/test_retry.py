"""The one retry helper (common/retry.py) and the paths that use it: attempt counts, delays, which errors
are retried and which are not, the last error surfacing; storage uploads against the Supabase stand-in and
the memory-broker reports against a local HTTP server (real clients, nothing mocked)."""
from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.retry import backoff_delay, linear_delay, retry_call
from configuration.settings import Settings


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


class Flaky:
    """Fails with a new `Transient` on each of its first `failures` calls, then returns "ok"."""

    def __init__(self, failures: int, error: type[Exception] = Transient):
        self.failures, self.error, self.calls, self.raised = failures, error, 0, []

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            exc = self.error(f"failure {self.calls}")
            self.raised.append(exc)
            raise exc
        return "ok"


def retry_transient(call, attempts: int, step_s: float = 0.5):
    slept: list[float] = []
    result = retry_call(call, attempts=attempts, delay_s=linear_delay(step_s),
                        retryable=lambda exc: isinstance(exc, Transient), sleep=slept.append)
    return result, slept


def test_success_at_once_calls_once_and_never_sleeps():
    call = Flaky(0)
    assert retry_transient(call, attempts=3) == ("ok", [])
    assert call.calls == 1


def test_retryable_failures_are_retried_with_the_given_delays():
    call = Flaky(2)
    assert retry_transient(call, attempts=3, step_s=0.5) == ("ok", [0.5, 1.0])
    assert call.calls == 3


def test_the_last_error_surfaces_unchanged_and_nothing_sleeps_after_the_last_attempt():
    call = Flaky(5)
    slept: list[float] = []
    with pytest.raises(Transient) as raised:
        retry_call(call, attempts=3, delay_s=linear_delay(0.5), retryable=lambda exc: isinstance(exc, Transient),
                   sleep=slept.append)
    assert call.calls == 3
    assert raised.value is call.raised[-1]
    assert slept == [0.5, 1.0]


def test_an_error_the_caller_does_not_retry_propagates_at_once():
    call = Flaky(1, error=Permanent)
    slept: list[float] = []
    with pytest.raises(Permanent):
        retry_call(call, attempts=5, delay_s=linear_delay(0.5), retryable=lambda exc: isinstance(exc, Transient),
                   sleep=slept.append)
    assert call.calls == 1
    assert slept == []


def test_the_retryable_predicate_sees_each_error():
    call = Flaky(3)
    seen: list[Exception] = []

    def retryable(exc: Exception) -> bool:
        seen.append(exc)
        return len(seen) < 2  # the second error is judged final

    with pytest.raises(Transient) as raised:
        retry_call(call, attempts=10, delay_s=linear_delay(0.0), retryable=retryable, sleep=lambda s: None)
    assert seen == call.raised[:2]
    assert raised.value is call.raised[1]
    assert call.calls == 2


def test_the_default_sleep_really_waits():
    import time
    call = Flaky(2)
    started = time.monotonic()
    assert retry_call(call, attempts=3, delay_s=linear_delay(0.02), retryable=lambda exc: True) == "ok"
    assert time.monotonic() - started >= 0.06 - 0.005  # 0.02 + 0.04


@given(attempts=st.integers(1, 12), failures=st.integers(0, 15), step_s=st.floats(0.0, 5.0))
def test_attempts_and_delays_are_bounded(attempts, failures, step_s):
    call = Flaky(failures)
    slept: list[float] = []
    def run() -> str:
        return retry_call(call, attempts=attempts, delay_s=linear_delay(step_s),
                          retryable=lambda exc: isinstance(exc, Transient), sleep=slept.append)

    if failures >= attempts:
        with pytest.raises(Transient) as raised:
            run()
        assert raised.value is call.raised[-1]
    else:
        assert run() == "ok"
    assert call.calls == min(failures + 1, attempts)
    assert len(slept) == call.calls - 1
    assert slept == [step_s * n for n in range(1, call.calls)]
    assert sum(slept) <= step_s * attempts * (attempts - 1) / 2 + 1e-9


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        retry_call(lambda: "ok", attempts=0, delay_s=linear_delay(1.0), retryable=lambda exc: True)
    with pytest.raises(ValueError, match="failures counts from 1"):
        backoff_delay(0, 1.0, 10.0)


def test_backoff_doubles_from_the_first_delay_up_to_the_cap():
    assert [backoff_delay(n, 0.5, 3.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert [backoff_delay(n, 2.0, 60.0) for n in range(1, 8)] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


@given(first_s=st.floats(0.0, 100.0), extra_s=st.floats(0.0, 1000.0), failures=st.integers(1, 10**6))
def test_backoff_is_bounded_and_never_shrinks(first_s, extra_s, failures):
    cap_s = first_s + extra_s
    delay = backoff_delay(failures, first_s, cap_s)
    assert first_s <= delay <= cap_s or (first_s == 0 and delay == 0)
    assert backoff_delay(failures + 1, first_s, cap_s) >= delay
    assert backoff_delay(1, first_s, cap_s) == first_s


# -- the paths that use it ------------------------------------------------------------------------------------
def test_storage_upload_retries_transient_failures_then_succeeds_or_surfaces_the_last():
    from tests.supabase_standin import SupabaseStandIn
    from workers.runtime.storage import StorageError, SupabaseStorage

    def uploads(standin) -> int:
        return sum(1 for r in standin.requests if r["method"] in ("POST", "PUT") and "/storage/" in r["path"])

    with SupabaseStandIn() as standin:
        storage = SupabaseStorage(standin.url, standin.service_key, "workspace-temp", backoff_s=0.01)
        standin.fail_uploads = 2  # two 503s, then the upload goes through (ATTEMPTS = 3)
        assert storage.put("u1/j1/0.png", b"\x89PNG", "image/png") == "u1/j1/0.png"
        assert uploads(standin) == 3
        assert standin.objects[("workspace-temp", "u1/j1/0.png")] == (b"\x89PNG", "image/png")
        standin.fail_uploads = 3  # every attempt fails: the last error is the job's
        with pytest.raises(StorageError, match="HTTP 503"):
            storage.put("u1/j1/1.png", b"\x89PNG", "image/png")
        assert uploads(standin) == 6
        with pytest.raises(StorageError, match="HTTP 415"):  # a refusal is not retried
            storage.put("u1/j1/2.png", b"x", "application/octet-stream")
        assert uploads(standin) == 7


class BrokerStandIn:
    """Answers `POST /broker/<action>` with the next scripted status of that action (200 once the script
    is used up) and records every call."""

    def __init__(self):
        self.script: dict[str, list[int]] = {}
        self.calls: list[str] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                action = self.path.rsplit("/", 1)[-1]
                standin.calls.append(action)
                queued = standin.script.get(action) or [200]
                status = queued.pop(0)
                body = json.dumps({} if status == 200 else {"error": {"code": "x", "message": f"scripted {status}"}})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def broker_lines(caplog) -> list[str]:
    """What the broker client logged. caplog's handler sits on the root logger and also catches what other
    threads of the process log meanwhile: a callback sender of an earlier test still retrying its receiver's
    closed port once put its warning first here."""
    from workers.runtime import broker_client

    return [r.getMessage() for r in caplog.records if r.name == broker_client.__name__]


@pytest.fixture
def broker_standin():
    standin = BrokerStandIn()
    yield standin
    standin.close()


def test_broker_reports_retry_the_brokers_trouble_not_its_refusals(broker_standin, caplog):
    from workers.runtime import broker_client

    memory = broker_client.BrokerMemory("sdxl", Settings(orchestrator_url=broker_standin.url, broker_token="t"),
                                        "cpu")
    assert broker_standin.calls == ["hello"]
    broker_standin.script["touch"] = [503, 502]  # two 5xx, then delivered: three posts, nothing logged
    with caplog.at_level(logging.WARNING, logger=broker_client.__name__):
        memory.touch(["sdxl_lustify"])
        assert broker_standin.calls[1:] == ["touch"] * 3
        assert not broker_lines(caplog)
        broker_standin.script["release"] = [400]  # a refusal: one post, then the warning names it
        memory.release("sdxl_lustify")
        assert broker_standin.calls[4:] == ["release"]
        assert broker_lines(caplog) == [
            "memory broker report release {'model': 'sdxl_lustify'} not delivered (HTTP 400: scripted 400)"]
        caplog.clear()
        broker_standin.script["job_finished"] = [500] * broker_client.REPORT_ATTEMPTS  # every attempt fails
        memory.job_finished()
        assert broker_standin.calls[5:] == ["job_finished"] * broker_client.REPORT_ATTEMPTS
        assert broker_lines(caplog) == [
            "memory broker report job_finished {} not delivered (HTTP 500: scripted 500)"]


def test_broker_reports_to_an_unreachable_broker_give_up_after_the_attempts(broker_standin, caplog):
    from workers.runtime import broker_client

    memory = broker_client.BrokerMemory("sdxl", Settings(orchestrator_url=broker_standin.url, broker_token="t"),
                                        "cpu")
    broker_standin.close()  # nothing listens on the port any more
    with caplog.at_level(logging.WARNING, logger=broker_client.__name__):
        memory.touch(["m"])
    assert broker_lines(caplog) == [
        "memory broker report touch {'models': ['m']} not delivered (ConnectionError)"]
