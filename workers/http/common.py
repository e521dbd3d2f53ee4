"""Endpoints every worker serves: health, ready, memory, OpenAPI."""
from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Blueprint, current_app, jsonify

from common import auth, errors
from common.body import body_with_query, json_body
from common.errors import ApiError, Unavailable
from configuration import requests, worker_capabilities
from configuration.openapi import RouteTable, openapi_document, route_endpoints
from configuration.requests.memory import MemoryAction

if TYPE_CHECKING:
    from workers.runtime.worker_state import WorkerState


def state() -> WorkerState:
    return current_app.extensions["worker_state"]


def require_ready() -> None:
    if state().shutting_down:
        raise Unavailable("worker is shutting down", retry_after_s=errors.RETRY_AFTER_S)


bp = Blueprint("common", __name__)


@bp.get("/health")
def health():
    s = state()
    # capabilities and endpoints: what the app's worker discovery reads from this JSON
    return jsonify({"status": "ok", "worker": s.name, "pid": s.pid, "capabilities": worker_capabilities(s.name),
                    "endpoints": route_endpoints(*s.routes)})


@bp.get("/ready")
def ready():
    s = state()
    require_ready()
    answer: dict = {"ready": True, "worker": s.name}
    if s.intake is not None:  # Redis down leaves the worker ready for HTTP jobs; this says so
        intake = s.intake.status()
        # Without a key, what a load balancer needs: no job ids, no Redis error text (docs/OPERATIONS.md).
        answer["queue"] = intake if auth.authenticated() else {"connected": intake["connected"],
                                                               "redis": intake["redis"]}
    if auth.authenticated():
        answer["queue_depth"] = s.queue_depth()
    refused = s.callbacks.refusal_warning() if s.callbacks is not None else None
    if refused:  # a warning, not unreadiness: jobs still run and their callbacks are kept and retried
        answer["warnings"] = [refused]
    return jsonify(answer)


@bp.get("/memory/status")
def memory_status():
    return jsonify(state().memory_status())


def _memory_args() -> MemoryAction:
    body = body_with_query(json_body(optional=True), ("which",), {"wait_s": (0, 600)})
    return requests.check("memory.action", body, state().settings)


def _models(which: str | None) -> str | None:
    try:
        state().host.resolve(which)
    except KeyError:
        raise ApiError(400, errors.VALIDATION_ERROR, f"unknown model {which!r}",
                       [{"path": "/which",
                         "message": f"must be one of {state().host.model_names() + ['all']}"}]) from None
    return which


@bp.post("/memory/load")
def memory_load():
    require_ready()
    args = _memory_args()
    if "wait_s" in args.model_fields_set:
        raise ApiError(400, errors.VALIDATION_ERROR, "wait_s applies to /memory/unload only",
                       [{"path": "/wait_s", "message": "is only accepted by /memory/unload"}])
    loaded = state().host.load(_models(args.which))  # MemoryUnavailable: common/errors.py answers
    return jsonify({"success": True, "loaded": loaded, **state().memory_status()})


@bp.post("/memory/unload")
def memory_unload():
    args = _memory_args()
    # ModelBusy (a job uses the model past wait_s): 409 model_busy, from common/errors.py
    unloaded = state().host.unload(_models(args.which), wait_s=float(args.wait_s or 0))
    return jsonify({"success": True, "unloaded": unloaded, **state().memory_status()})


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document(state().name, state().settings, *state().routes))


# What /openapi.json describes: path -> method -> (summary, request schema name or None, error statuses).
ROUTES: RouteTable = {
    "/health": {"get": ("Process is alive (no auth), with `capabilities` (role, models, what it can do) and "
                        "`endpoints` (path -> methods), which the app's worker discovery reads.", None, ())},
    "/ready": {"get": ("Able to take work (no auth): 200 once the app is built; a stopping worker closes its "
                       "port at once. With REDIS_URL, `queue.redis` says whether the Redis queue intake is "
                       "`connected`, `unreachable` or `password_refused` (Redis down leaves the worker ready for "
                       "HTTP jobs). With a key, also `queue_depth` and the consumer's whole state (since when, the "
                       "error, in-flight jobs, counters). "
                       "`warnings` (when present): callbacks refused by the receiver (401/403, retried): check "
                       "JOB_CALLBACK_SECRET.", None, ())},
    "/memory/status": {"get": ("Models loaded, resident bytes, device, busy.", None, (401,))},
    "/memory/load": {"post": ("Load a model (`which`).", "memory.action", (400, 401, 409, 503))},
    "/memory/unload": {"post": ("Unload a model (`which`); 409 while it runs a job.", "memory.action", (400, 401,
                                                                                                        409))},
    "/openapi.json": {"get": ("This document.", None, (401,))},
}
