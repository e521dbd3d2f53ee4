"""The job endpoints workers and the orchestrator serve alike: the answer to a submission (`?wait=`),
`GET /jobs/<id>` and `POST /jobs/<id>/cancel`, over anything that keeps jobs (a worker's JobRunner, the
orchestrator's Router)."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from flask import Blueprint, Response, jsonify

from common import errors
from common.errors import ApiError
from common.jobs import JobRecord


class JobStore(Protocol):
    def get(self, job_id: str) -> JobRecord | None: ...

    def wait(self, job_id: str, timeout_s: float) -> bool: ...

    def cancel(self, job_id: str) -> JobRecord:
        """KeyError: unknown job. ValueError: already finished."""
        ...


# Requests that may block on `?wait=` at once. A waiting request holds a server thread; the rest are kept
# for everything else (health probes, job status, cancels), so waits can never starve them. Past the
# limit a submission answers at once, as without `?wait=` (202 and where to look).
WAIT_RESERVED_THREADS = 8
_wait_slots = threading.BoundedSemaphore(1)


def limit_waits(server_threads: int) -> None:
    """Let at most `server_threads - WAIT_RESERVED_THREADS` requests wait at once (call at app creation)."""
    global _wait_slots
    _wait_slots = threading.BoundedSemaphore(max(1, server_threads - WAIT_RESERVED_THREADS))


def submission_response(store: JobStore, record: JobRecord, created: bool,
                        wait_s: float | None) -> tuple[Response, int]:
    """200 with the record when it ended within `wait_s`; else 202 (new) or 200 (a known id) with where to look."""
    if wait_s:
        slots = _wait_slots
        if slots.acquire(blocking=False):
            try:
                if store.wait(record.job_id, wait_s):
                    return jsonify(record.public()), 200
            finally:
                slots.release()
    return jsonify({"job_id": record.job_id, "status": record.status, "status_url": f"/jobs/{record.job_id}",
                    "duplicate": not created, "request_id": record.request_id}), 202 if created else 200


def add_job_routes(bp: Blueprint, store: Callable[[], JobStore], where: str) -> None:
    """GET /jobs/<job_id> and POST /jobs/<job_id>/cancel on `bp`; `where` ends the 404 message ("on this worker")."""

    @bp.get("/jobs/<job_id>")
    def get_job(job_id: str) -> Response:
        record = store().get(job_id)
        if record is None:
            raise ApiError(404, errors.NOT_FOUND, f"no job {job_id} {where}")
        return jsonify(record.public())

    @bp.post("/jobs/<job_id>/cancel")
    def cancel_job(job_id: str) -> Response:
        try:
            record = store().cancel(job_id)
        except KeyError:
            raise ApiError(404, errors.NOT_FOUND, f"no job {job_id} {where}") from None
        except ValueError as exc:
            raise ApiError(409, errors.JOB_FINISHED, str(exc)) from None
        return jsonify(record.public())
