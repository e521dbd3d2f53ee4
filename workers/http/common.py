"""Endpoints every worker serves: health, ready, jobs, cancel, memory, OpenAPI."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from configuration.schemas import validate_request
from workers.http.body import json_body, query_float
from workers.http.errors import ApiError
from workers.runtime.errors import MemoryUnavailable, ModelBusy


def state():
    return current_app.extensions["worker_state"]


def _unavailable(message: str) -> ApiError:
    return ApiError(503, "unavailable", message, headers={"Retry-After": "5"})


def require_ready() -> None:
    if state().shutting_down:
        raise _unavailable("worker is shutting down")


bp = Blueprint("common", __name__)


@bp.get("/health")
def health():
    s = state()
    return jsonify({"status": "ok", "worker": s.name, "pid": s.pid})


@bp.get("/ready")
def ready():
    s = state()
    if s.shutting_down:
        raise _unavailable("worker is shutting down")
    return jsonify({"ready": True, "worker": s.name, "queue_depth": s.runner.queue_depth()})


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    record = state().runner.get(job_id)
    if record is None:
        raise ApiError(404, "not_found", f"no job {job_id} on this worker")
    return jsonify(record.public())


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    try:
        record = state().runner.cancel(job_id)
    except KeyError:
        raise ApiError(404, "not_found", f"no job {job_id} on this worker") from None
    except ValueError as exc:
        raise ApiError(409, "job_finished", str(exc)) from None
    return jsonify(record.public())


@bp.get("/memory/status")
def memory_status():
    return jsonify(state().memory_status())


def _memory_args() -> dict:
    body = json_body(optional=True)
    if "which" in request.args:
        body.setdefault("which", request.args["which"])
    if "wait_s" in request.args:
        body.setdefault("wait_s", query_float("wait_s", 0, 600))
    validate_request("memory.action", body, state().settings)
    return body


def _models(which: str | None) -> str | None:
    try:
        state().host.resolve(which)
    except KeyError:
        raise ApiError(400, "validation_error", f"unknown model {which!r}",
                       [{"path": "/which", "message": f"must be one of {state().host.model_names() + ['all']}"}]) from None
    return which


@bp.post("/memory/load")
def memory_load():
    require_ready()
    args = _memory_args()
    if "wait_s" in args:
        raise ApiError(400, "validation_error", "wait_s applies to /memory/unload only",
                       [{"path": "/wait_s", "message": "is only accepted by /memory/unload"}])
    which = _models(args.get("which"))
    try:
        loaded = state().host.load(which)
    except MemoryUnavailable as exc:
        raise ApiError(409, "insufficient_memory", exc.message, [exc.details]) from None
    return jsonify({"success": True, "loaded": loaded, **state().memory_status()})


@bp.post("/memory/unload")
def memory_unload():
    args = _memory_args()
    which = _models(args.get("which"))
    try:
        unloaded = state().host.unload(which, wait_s=float(args.get("wait_s", 0)))
    except ModelBusy as exc:
        raise ApiError(409, "model_busy", f"{exc}; retry when the job has finished or pass wait_s") from None
    return jsonify({"success": True, "unloaded": unloaded, **state().memory_status()})


@bp.get("/openapi.json")
def openapi():
    from configuration.openapi import openapi_document
    return jsonify(openapi_document(state().name, state().settings))
