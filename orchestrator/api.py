"""The orchestrator's HTTP API (Flask app factory; served by waitress from orchestrator/__main__.py).

Public: `POST /jobs`, `GET /jobs/<id>`, `POST /jobs/<id>/cancel`, `GET /workers`, `GET /memory/status`,
`POST /memory/load|unload` (a worker's models, through the broker), `GET /health`, `GET /ready`,
`GET /openapi.json`, `GET /metrics`; the ops page `GET /` (its HTML is public, its data `GET /ops/state`
needs the key). The memory broker (`POST /broker/*`) is not here: orchestrator/broker_api.py serves it on a
loopback port of its own, to the pod's workers only.
Errors, auth and body parsing are common/ (the same as the workers'); ROUTES below is what
`/openapi.json` describes.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from flask import Blueprint, Flask, Response, current_app, jsonify

from common import auth, errors, metrics
from common.body import body_with_query, install_body_cap, json_body, query_bool, query_float
from common.errors import Unavailable
from common.http import InsertionOrderJSON, install_options
from common.job_routes import add_job_routes, limit_waits, submission_response
from common.logging import install_request_id
from configuration import requests as request_models
from configuration.openapi import RouteTable, openapi_document, route_endpoints

if TYPE_CHECKING:
    from orchestrator.pod import Pod

MAX_WAIT_S = 600.0

bp = Blueprint("orchestrator", __name__)


def pod() -> Pod:
    return current_app.extensions["pod"]


# ---- probes --------------------------------------------------------------------------------------

@bp.get("/health")
def health() -> Response:
    capabilities = {"role": "orchestrator", "workers": list(pod().supervisors), "routing": True}
    return jsonify({"status": "ok", "worker": "orchestrator", "pid": os.getpid(), "capabilities": capabilities,
                    "endpoints": route_endpoints(ROUTES)})


@bp.get("/ready")
def ready() -> Response:
    p = pod()
    workers = {name: s.state for name, s in p.supervisors.items()}
    if p.shutting_down:
        raise Unavailable("the orchestrator is shutting down", retry_after_s=errors.RETRY_AFTER_S)
    if not all(state == "ready" for state in workers.values()):
        waiting = ", ".join(f"{n} {s}" for n, s in workers.items() if s != "ready")
        raise Unavailable(f"not every worker is ready: {waiting}", details=[{"path": "", "message": waiting}],
                          retry_after_s=errors.RETRY_AFTER_S)
    answer: dict = {"ready": True, "worker": "orchestrator", "workers": workers}
    redis_state = p.queues.probe_redis()
    if redis_state is not None:  # the workers still serve HTTP jobs without Redis: said, not unready
        answer["redis"] = redis_state
    refused = p.callbacks.refusal_warning()
    if refused:  # a warning, not unreadiness: routed jobs still run and their callbacks are retried
        answer["warnings"] = [refused]
    return jsonify(answer)


# ---- jobs ------------------------------------------------------------------------------------------

@bp.post("/jobs")
def submit_job() -> tuple[Response, int]:
    p = pod()
    if p.shutting_down:
        raise Unavailable("the orchestrator is shutting down", retry_after_s=errors.RETRY_AFTER_S)
    body = json_body()
    wait_s = query_float("wait", 0, MAX_WAIT_S)
    if query_bool("dry_run"):
        return jsonify(p.router.dry_run(body)), 200
    record, created = p.router.submit(body)
    return submission_response(p.router, record, created, wait_s)


add_job_routes(bp, lambda: pod().router, "was routed by this orchestrator")


# ---- operators --------------------------------------------------------------------------------------

@bp.get("/workers")
def workers() -> Response:
    return jsonify({"workers": pod().workers_info()})


@bp.get("/queues")
def queues() -> Response:
    return jsonify(pod().queues.status())


@bp.get("/memory/status")
def memory_status() -> Response:
    requested = query_float("history", 0, 500)
    return jsonify(pod().memory_status(100 if requested is None else int(requested)))


def _memory_action(action: str) -> Response:
    body = body_with_query(json_body(optional=True), ("worker", "which"), {"wait_s": (0, 600)})
    return jsonify(pod().memory_action(action, request_models.check("orchestrator.memory_action", body,
                                                                    pod().settings)))


@bp.post("/memory/load")
def memory_load() -> Response:
    return _memory_action("load")


@bp.post("/memory/unload")
def memory_unload() -> Response:
    return _memory_action("unload")


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document("orchestrator", pod().settings, ROUTES))


# ---- the ops page ------------------------------------------------------------------------------------------

OPS_PAGES = ("/", "/ops")


@bp.get("/")
@bp.get("/ops")
def ops_page() -> Response:
    """The HTML (no data in it: its script asks /ops/state with the key the operator enters)."""
    return Response(current_app.extensions["ops"].page(), content_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-store"})


@bp.get("/ops/state")
def ops_state() -> Response:
    return jsonify(current_app.extensions["ops"].state())


def create_app(the_pod: Pod) -> Flask:
    from orchestrator.ops import OpsView

    app = Flask("ourvidz-orchestrator")
    app.json = InsertionOrderJSON(app)
    app.extensions["pod"] = the_pod
    limit_waits(the_pod.settings.orchestrator_threads)  # `?wait=` never takes the last threads (/health, status)
    app.extensions["ops"] = ops = OpsView(the_pod)
    metrics.process_metrics().on_scrape(ops.refresh_metrics, key="orchestrator")
    install_request_id(app)
    errors.register_error_handlers(app)
    install_body_cap(app, the_pod.settings.max_body_bytes)
    install_options(app)  # OPTIONS: 204 with Allow, before auth (the app's endpoint discovery sends no key)
    auth.install_auth(app, the_pod.settings.api_keys,
                      open_paths=OPS_PAGES + metrics.open_paths(the_pod.settings.metrics_public))
    app.register_blueprint(bp)
    app.register_blueprint(metrics.metrics_blueprint())
    return app


# What /openapi.json describes: path -> method -> (summary, request schema name or None, error statuses).
ROUTES: RouteTable = {
    "/health": {"get": ("Process is alive (no auth), with `capabilities` (role, enabled workers) and `endpoints` "
                        "(path -> methods).", None, ())},
    "/ready": {"get": ("Every enabled worker is ready and the orchestrator takes jobs (no auth); 503 otherwise. "
                       "With REDIS_URL, `redis`: `connected`, `unreachable` or `password_refused` (checked at most "
                       "every 2 s; the workers still take HTTP jobs without Redis, so it does not make /ready 503). "
                       "`warnings` (when present): callbacks refused by the receiver (401/403, retried): check "
                       "JOB_CALLBACK_SECRET.", None, (503,))},
    "/jobs": {"post": ("Route a job: optional enhancement on the chat worker, then SDXL or WAN (202; `?wait=` blocks).",
                       "orchestrator.jobs", (400, 401, 409, 413, 503))},
    "/jobs/{job_id}": {"get": ("The routed job's record.", None, (401, 404))},
    "/jobs/{job_id}/cancel": {"post": ("Cancel a routed job.", None, (401, 404, 409, 503))},
    "/workers": {"get": ("Each worker's state, pid, restarts, URL.", None, (401,))},
    "/queues": {"get": ("The app's Redis queues this pod consumes: depth, dead letters, every consumer (this pod's "
                        "or another's, alive or not) and the jobs it holds (docs/API.md).", None, (401,))},
    "/memory/status": {"get": ("The pod's memory: device, budget, each worker's models, pressure, history.", None,
                               (401,))},
    "/memory/load": {"post": ("Load a worker's models (through the broker).", "orchestrator.memory_action",
                              (400, 401, 409, 503))},
    "/memory/unload": {"post": ("Unload a worker's models; 409 while they run a job.", "orchestrator.memory_action",
                                (400, 401, 409, 503))},
    "/openapi.json": {"get": ("This document.", None, (401,))},
    "/": {"get": ("The ops page (HTML, no auth; its data comes from /ops/state with the key).", None, ())},
    "/ops": {"get": ("The ops page (same as /).", None, ())},
    "/ops/state": {"get": ("What the ops page shows: workers, memory, queues, running and last 50 jobs (no prompts), "
                           "callback backlog.", None, (401,))},
    **metrics.ROUTES,
}
