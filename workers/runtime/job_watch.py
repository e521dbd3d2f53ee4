"""The watch over the job running on a worker's executor: its deadline, and the app's cancel.

Deadline (JOB_DEADLINE_IMAGE_S / JOB_DEADLINE_VIDEO_S, from the job's start): past it, the job's context
is asked to stop, which the engine honours at its next step boundary (the cancellation the runtime
already has); the job then fails `timeout`. An engine that does not come back within
JOB_DEADLINE_GRACE_S is stuck where nothing in this process can stop it: the runner ends the job
`timeout` in the journal and replaces the process (`on_stuck`; docs/OPERATIONS.md).

The app's cancel (APP_CANCEL_CHECK): the app cancels a job by setting `jobs.status = 'cancelled'` in its
database and never calls the worker. For the app's queued jobs, the status is read through the
supabase client with the service key before the job is accepted (queue_jobs.py) and every
APP_CANCEL_CHECK_INTERVAL_S while it runs; a `cancelled` there stops it at the next step boundary.
A read that fails never fails the job: it is counted (app_status_read_failures_total) and logged once
per job. Both watches run on threads of their own, so a slow database never delays a step.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.job_status import JobStatus
from common.metrics import process_metrics
from common.supabase import SupabaseError, job_status, make_client
from configuration import job_types
from configuration.settings import Settings

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 5.0  # one read of the app's `jobs` table
FORGET_AFTER_JOBS = 1024  # past this many remembered jobs, those last read over FORGET_AFTER_S ago are dropped
FORGET_AFTER_S = 3600.0


def deadline_of(settings: Settings, job_type: str) -> float:
    """A job's execution deadline: JOB_DEADLINE_VIDEO_S for job types that make a video (`output` in
    configuration/presets.json), JOB_DEADLINE_IMAGE_S for the others (SDXL, WAN single-frame images)."""
    return settings.job_deadline_s(job_types().get(job_type, {}).get("output", "image"))


class AppJobStatus:
    """Reads a job's status in the app's `jobs` table (PostgREST, service key)."""

    def __init__(self, worker: str, settings: Settings):
        self.worker = worker
        self.client = make_client(settings.supabase_url, settings.supabase_service_key, READ_TIMEOUT_S)
        self._failed_once: set[str] = set()  # job ids whose failed read was logged (once per job)
        self._read_at: dict[str, float] = {}  # job id -> monotonic time of its latest read
        self._lock = threading.Lock()

    def cancelled(self, job_id: str) -> bool:
        """True when the app marked the job `cancelled`; False also when the status cannot be read."""
        with self._lock:
            now = self._read_at[job_id] = time.monotonic()
            if len(self._read_at) > FORGET_AFTER_JOBS:  # jobs read but never run (refused, cancelled early)
                self._read_at = {k: t for k, t in self._read_at.items() if now - t < FORGET_AFTER_S}
                self._failed_once &= set(self._read_at)
        try:
            return job_status(self.client, job_id) == JobStatus.CANCELLED
        except SupabaseError as exc:
            process_metrics().child(process_metrics().app_status_read_failures, self.worker).inc()
            with self._lock:
                first = job_id not in self._failed_once
                self._failed_once.add(job_id)
            if first:
                log.warning("job %s: its status in the app's jobs table could not be read (%s); it goes on "
                            "(logged once per job)", job_id, exc.message)
            return False

    def read_at(self, job_id: str) -> float | None:
        with self._lock:
            return self._read_at.get(job_id)

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._failed_once.discard(job_id)
            self._read_at.pop(job_id, None)


@dataclass
class _Watched:
    job_id: str
    stop: Callable[[str], None]   # the job context's stop(reason)
    started: float                # monotonic
    deadline_s: float
    app_job: bool

    @property
    def deadline(self) -> float:
        return self.started + self.deadline_s


class JobWatch:
    """Watches one running job at a time (the executor runs one). `on_stuck(job_id, deadline_s)` is called
    on the deadline thread when the job is still running JOB_DEADLINE_GRACE_S after its deadline."""

    def __init__(self, worker: str, settings: Settings, on_stuck: Callable[[str, float], Any]):
        self.worker = worker
        self.grace_s = settings.job_deadline_grace_s
        self.interval_s = settings.app_cancel_check_interval_s
        self.app_status = AppJobStatus(worker, settings) if settings.reads_app_job_status else None
        self._on_stuck = on_stuck
        self._current: _Watched | None = None
        self._cond = threading.Condition()
        self._metrics = process_metrics()
        loops = [(self._deadline_loop, "deadline")] + ([(self._app_loop, "app-cancel")] if self.app_status else [])
        for target, name in loops:
            threading.Thread(target=target, name=f"{worker}-{name}", daemon=True).start()

    def start(self, job_id: str, stop: Callable[[str], None], deadline_s: float, app_job: bool) -> None:
        with self._cond:
            self._current = _Watched(job_id, stop, time.monotonic(), deadline_s, app_job)
            self._cond.notify_all()

    def finished(self, job_id: str) -> None:
        with self._cond:
            if self._current is not None and self._current.job_id == job_id:
                self._current = None
                self._cond.notify_all()
        if self.app_status is not None:
            self.app_status.forget(job_id)

    def cancelled_in_app(self, job_id: str) -> bool:
        """The start check of one of the app's jobs: True when the app has cancelled it (never when the
        check is off or the read fails)."""
        if self.app_status is None or not self.app_status.cancelled(job_id):
            return False
        self._metrics.child(self._metrics.app_cancels, self.worker, "before_start").inc()
        return True

    # -- the threads -------------------------------------------------------------------------------
    def _next(self, at: Callable[[_Watched], float]) -> _Watched:
        """Wait until a job is watched and `at(job)` (monotonic) has passed; that job."""
        with self._cond:
            while True:
                watched = self._current
                if watched is None:
                    self._cond.wait()
                    continue
                left = at(watched) - time.monotonic()
                if left <= 0:
                    return watched
                self._cond.wait(None if left == float("inf") else left)

    def _still(self, watched: _Watched) -> bool:
        with self._cond:
            return self._current is watched

    def _deadline_loop(self) -> None:
        while True:
            watched = self._next(lambda w: w.deadline)
            log.warning("job %s: past its deadline of %.0fs; stopping it at the next step", watched.job_id,
                        watched.deadline_s)
            watched.stop("timeout")

            def grace_over(w: _Watched, stuck: _Watched = watched) -> float:
                return w.deadline + self.grace_s if w is stuck else 0.0  # another job: no wait

            self._next(grace_over)
            if not self._still(watched):
                continue
            log.error("job %s: the engine did not stop within %.0fs of the deadline", watched.job_id, self.grace_s)
            try:
                self._on_stuck(watched.job_id, watched.deadline_s)
            except Exception:  # the watch must survive whatever the hook does
                log.exception("job %s: handling the stuck engine failed", watched.job_id)
            with self._cond:
                if self._current is watched:
                    self._current = None

    def _app_loop(self) -> None:
        app_status = self.app_status
        if app_status is None:
            raise RuntimeError("the app-cancel loop runs only with APP_CANCEL_CHECK's reader")

        def next_read(w: _Watched) -> float:
            # An interval after the latest read of the job (the start check's, when it was taken from the
            # queue); at its start when that was longer ago (it waited for its references or its turn).
            if not w.app_job:
                return float("inf")
            previous = app_status.read_at(w.job_id)
            return (w.started - self.interval_s if previous is None else previous) + self.interval_s

        while True:
            watched = self._next(next_read)
            if app_status.cancelled(watched.job_id) and self._still(watched):
                log.info("job %s: cancelled in the app; stopping it at the next step", watched.job_id)
                self._metrics.child(self._metrics.app_cancels, self.worker, "running").inc()
                watched.stop("app_cancel")
