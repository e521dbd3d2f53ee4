"""The job endpoints workers and the orchestrator serve alike: the answer to a submission (`?wait=`),
`GET /jobs/<id>` and `POST /jobs/<id>/cancel`, over anything that keeps jobs (a worker's JobRunner, the
orchestrator's Router)."""
from __future__ import annotations

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


def submission_response(store: JobStore, record: JobRecord, created: bool,
                        wait_s: float | None) -> tuple[Response, int]:
    """200 with the record when it ended within `wait_s`; else 202 (new) or 200 (a known id) with where to look."""
    if wait_s and store.wait(record.job_id, wait_s):
        return jsonify(record.public()), 200
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
