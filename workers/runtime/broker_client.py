"""BrokerMemory: the memory client of a worker started by the orchestrator (ORCHESTRATOR_URL set).

Same interface as workers/runtime/local_memory.LocalMemory, but every decision is the orchestrator's memory
broker's, so the workers of one pod share one device without over-subscribing it. `acquire`,
`job_started` and `admit` may wait or be refused (MemoryUnavailable); the reports (`loaded`,
`release`, `job_finished`, `touch`) never fail a job: when the broker cannot be reached they are
retried briefly, then logged, and the broker's own bookkeeping (a worker's death or restart drops
everything it held) keeps it right.
"""
from __future__ import annotations

import logging
import os
import threading

import requests

from common.errors import MemoryUnavailable
from common.http import bearer_session, error_of
from common.retry import linear_delay, retry_call
from configuration.settings import Settings

log = logging.getLogger(__name__)

REPORT_ATTEMPTS = 3
REPORT_BACKOFF_S = 0.2  # waits 0.2 s, then 0.4 s, between the attempts


class _ReportRefused(Exception):
    """The broker answered a report with an error status (a 5xx is worth another attempt, a 4xx is not)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def _retryable(exc: Exception) -> bool:
    """No answer, or the broker's own trouble (5xx)."""
    return isinstance(exc, requests.RequestException) or (isinstance(exc, _ReportRefused) and exc.status >= 500)


class BrokerMemory:
    def __init__(self, worker: str, settings: Settings, device: str):
        self.worker = worker
        self.device = device
        self.url = settings.orchestrator_url.rstrip("/")
        self.timeout_s = settings.lease_timeout_s
        self._session = bearer_session(settings.broker_token)  # the per-start token, not the API key
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._report("hello", {"pid": os.getpid()})

    # -- requests that may be refused ---------------------------------------------------------------
    def acquire(self, model: str, estimate_bytes: int, working_bytes: int) -> None:
        self._ask("acquire", {"model": model, "estimate_bytes": int(estimate_bytes),
                              "working_bytes": int(working_bytes)})
        with self._lock:
            self._held[model] = int(estimate_bytes)

    def admit(self, need_bytes: int) -> None:
        self._ask("admit", {"need_bytes": int(need_bytes)})

    def job_started(self, working_bytes: int) -> None:
        self._ask("job_started", {"working_bytes": int(working_bytes)})

    def grow_working(self, working_bytes: int) -> None:
        """The running job needs more working memory (not another job: job_finished stays one per job)."""
        self._ask("working", {"working_bytes": int(working_bytes)})

    def wait_turn(self, models: list[str]) -> None:
        """Before a job marks its models in use: the broker holds it while an older request of another
        worker needs this worker's memory (fairness). A courtesy: if the broker cannot answer, the job
        goes ahead and its own lease requests decide."""
        try:
            response = self._session.post(f"{self.url}/broker/turn", json={"worker": self.worker,
                                                                           "models": list(models)},
                                          timeout=self.timeout_s + 30)
            if response.status_code != 200:
                log.warning("memory broker turn answered HTTP %d; going ahead", response.status_code)
        except requests.RequestException as exc:
            log.warning("memory broker turn not answered (%s); going ahead", type(exc).__name__)

    def _ask(self, action: str, body: dict) -> None:
        try:
            # The broker answers when the lease is granted: allow it the whole lease timeout.
            response = self._session.post(f"{self.url}/broker/{action}", json={"worker": self.worker, **body},
                                          timeout=self.timeout_s + 30)
        except requests.RequestException as exc:
            raise MemoryUnavailable(f"the memory broker at {self.url} cannot be reached ({type(exc).__name__})",
                                    details={"broker": self.url}, broker_unreachable=True) from None
        if response.status_code == 200:
            return
        error = error_of(response)
        details = error.get("details") or [{}]
        # 409 is the broker's refusal; any other answer means it could not decide (ask again later).
        raise MemoryUnavailable(error.get("message", f"memory broker answered HTTP {response.status_code}"),
                                details=details[0], too_big=bool(details[0].get("too_big")),
                                broker_unreachable=response.status_code != 409)

    # -- reports --------------------------------------------------------------------------------------
    def loaded(self, model: str, resident_bytes: int) -> None:
        with self._lock:
            self._held[model] = int(resident_bytes)
        self._report("loaded", {"model": model, "resident_bytes": int(resident_bytes)})

    def release(self, model: str) -> None:
        with self._lock:
            self._held.pop(model, None)
        self._report("release", {"model": model})

    def job_finished(self) -> None:
        self._report("job_finished", {})

    def touch(self, models: list[str]) -> None:
        self._report("touch", {"models": list(models)})

    def _report(self, action: str, body: dict) -> None:
        def post() -> None:
            response = self._session.post(f"{self.url}/broker/{action}", json={"worker": self.worker, **body},
                                          timeout=10)
            if response.status_code != 200:
                raise _ReportRefused(response.status_code,
                                     f"HTTP {response.status_code}: {error_of(response).get('message', '')}")

        try:
            retry_call(post, attempts=REPORT_ATTEMPTS, delay_s=linear_delay(REPORT_BACKOFF_S), retryable=_retryable)
        except _ReportRefused as exc:
            log.warning("memory broker report %s %s not delivered (%s)", action, body, exc.reason)
        except requests.RequestException as exc:
            log.warning("memory broker report %s %s not delivered (%s)", action, body, type(exc).__name__)

    def status(self) -> dict:
        with self._lock:
            return {"mode": "broker", "broker_url": self.url, "held_bytes": dict(self._held)}
