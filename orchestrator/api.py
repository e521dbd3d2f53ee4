"""The orchestrator's HTTP API (Flask app factory; served by waitress from orchestrator/__main__.py).

Public: `POST /jobs`, `GET /jobs/<id>`, `POST /jobs/<id>/cancel`, `GET /workers`, `GET /memory/status`,
`POST /memory/load|unload` (a worker's models, through the broker), `GET /health`, `GET /ready`,
`GET /openapi.json`. Internal (the workers' memory client, workers/runtime/broker_client.py): `POST /broker/*`.
Errors, auth and body parsing are common/ (the same as the workers'); ROUTES below is what
`/openapi.json` describes.
"""
from __future__ import annotations

import os

from flask import Blueprint, Flask, current_app, jsonify, request

from common import auth, errors
from common.body import install_body_cap, json_body, query_float
from common.errors import ApiError, Unavailable
from common.job_routes import add_job_routes, submission_response
from configuration.openapi import RouteTable, openapi_document
from configuration.schemas import validate_request

MAX_WAIT_S = 600.0

bp = Blueprint("orchestrator", __name__)


def pod():
    return current_app.extensions["pod"]


# ---- probes --------------------------------------------------------------------------------------

@bp.get("/health")
def health():
    return jsonify({"status": "ok", "worker": "orchestrator", "pid": os.getpid()})


@bp.get("/ready")
def ready():
    p = pod()
    workers = {name: s.state for name, s in p.supervisors.items()}
    if p.shutting_down:
        raise Unavailable("the orchestrator is shutting down", retry_after_s=errors.RETRY_AFTER_S)
    if not all(state == "ready" for state in workers.values()):
        waiting = ", ".join(f"{n} {s}" for n, s in workers.items() if s != "ready")
        raise Unavailable(f"not every worker is ready: {waiting}", details=[{"path": "", "message": waiting}],
                          retry_after_s=errors.RETRY_AFTER_S)
    return jsonify({"ready": True, "worker": "orchestrator", "workers": workers})


# ---- jobs ------------------------------------------------------------------------------------------

@bp.post("/jobs")
def submit_job():
    p = pod()
    if p.shutting_down:
        raise Unavailable("the orchestrator is shutting down", retry_after_s=errors.RETRY_AFTER_S)
    body = json_body()
    wait_s = query_float("wait", 0, MAX_WAIT_S)
    record, created = p.router.submit(body)
    return submission_response(p.router, record, created, wait_s)


add_job_routes(bp, lambda: pod().router, "was routed by this orchestrator")


# ---- operators --------------------------------------------------------------------------------------

@bp.get("/workers")
def workers():
    return jsonify({"workers": pod().workers_info()})


@bp.get("/memory/status")
def memory_status():
    requested = query_float("history", 0, 500)
    return jsonify(pod().memory_status(100 if requested is None else int(requested)))


def _memory_action(action: str):
    body = json_body(optional=True)
    for key in ("worker", "which"):
        if key in request.args:
            body.setdefault(key, request.args[key])
    if "wait_s" in request.args:
        body.setdefault("wait_s", query_float("wait_s", 0, 600))
    validate_request("orchestrator.memory_action", body, pod().settings)
    return jsonify(pod().memory_action(action, body))


@bp.post("/memory/load")
def memory_load():
    return _memory_action("load")


@bp.post("/memory/unload")
def memory_unload():
    return _memory_action("unload")


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document("orchestrator", pod().settings, ROUTES))


# ---- the memory broker (called by the workers' BrokerMemory) -------------------------------------------

def _broker_body(action: str) -> dict:
    body = json_body()
    validate_request(f"orchestrator.broker_{action}", body, pod().settings)
    if body["worker"] not in pod().supervisors:
        raise ApiError(400, errors.VALIDATION_ERROR, f"unknown worker {body['worker']!r}",
                       [{"path": "/worker", "message": f"must be one of {sorted(pod().supervisors)}"}])
    return body


@bp.post("/broker/<action>")
def broker(action: str):
    broker = pod().broker
    timeout_s = pod().settings.lease_timeout_s
    handlers = {
        "hello": lambda b: broker.hello(b["worker"], b["pid"]),
        "acquire": lambda b: broker.acquire(b["worker"], b["model"], b["estimate_bytes"], b.get("working_bytes", 0), timeout_s),
        "admit": lambda b: broker.admit(b["worker"], b["need_bytes"]),
        "loaded": lambda b: broker.loaded(b["worker"], b["model"], b["resident_bytes"]),
        "release": lambda b: broker.release(b["worker"], b["model"]),
        "job_started": lambda b: broker.job_started(b["worker"], b.get("working_bytes", 0), timeout_s),
        "working": lambda b: broker.grow_working(b["worker"], b["working_bytes"], timeout_s),
        "job_finished": lambda b: broker.job_finished(b["worker"]),
        "touch": lambda b: broker.touch(b["worker"], b["models"]),
        "turn": lambda b: broker.wait_turn(b["worker"], timeout_s),
    }
    if action not in handlers:
        raise ApiError(404, errors.NOT_FOUND, f"no broker action {action!r}")
    handlers[action](_broker_body(action))  # MemoryUnavailable: 409 with the numbers (common/errors.py)
    return jsonify({"ok": True})


def create_app(the_pod) -> Flask:
    app = Flask("ourvidz-orchestrator")
    app.json.sort_keys = False
    app.extensions["pod"] = the_pod
    errors.register_error_handlers(app)
    install_body_cap(app, the_pod.settings.max_body_bytes)
    auth.install_auth(app, the_pod.settings.api_keys)
    app.register_blueprint(bp)
    return app


# What /openapi.json describes: path -> method -> (summary, request schema name or None, error statuses).
ROUTES: RouteTable = {
    "/health": {"get": ("Process is alive (no auth).", None, ())},
    "/ready": {"get": ("Every enabled worker is ready and the orchestrator takes jobs (no auth); 503 otherwise.", None, (503,))},
    "/jobs": {"post": ("Route a job: optional enhancement on the chat worker, then SDXL or WAN (202; `?wait=` blocks).",
                       "orchestrator.jobs", (400, 401, 409, 413, 503))},
    "/jobs/{job_id}": {"get": ("The routed job's record.", None, (401, 404))},
    "/jobs/{job_id}/cancel": {"post": ("Cancel a routed job.", None, (401, 404, 409, 503))},
    "/workers": {"get": ("Each worker's state, pid, restarts, URL.", None, (401,))},
    "/memory/status": {"get": ("The pod's memory: device, budget, each worker's models, pressure, history.", None, (401,))},
    "/memory/load": {"post": ("Load a worker's models (through the broker).", "orchestrator.memory_action", (400, 401, 409, 503))},
    "/memory/unload": {"post": ("Unload a worker's models; 409 while they run a job.", "orchestrator.memory_action", (400, 401, 409, 503))},
    "/openapi.json": {"get": ("This document.", None, (401,))},
    "/broker/hello": {"post": ("Broker (workers): a worker process started.", "orchestrator.broker_hello", (400, 401))},
    "/broker/acquire": {"post": ("Broker (workers): lease memory for a model; waits for busy workers, 409 with numbers when it cannot fit.",
                                 "orchestrator.broker_acquire", (400, 401, 409))},
    "/broker/admit": {"post": ("Broker (workers): 409 when a job could never fit.", "orchestrator.broker_admit", (400, 401, 409))},
    "/broker/loaded": {"post": ("Broker (workers): a model's measured size.", "orchestrator.broker_loaded", (400, 401))},
    "/broker/release": {"post": ("Broker (workers): a model was unloaded.", "orchestrator.broker_release", (400, 401))},
    "/broker/job_started": {"post": ("Broker (workers): a job starts; leases its working memory.", "orchestrator.broker_job_started", (400, 401, 409))},
    "/broker/working": {"post": ("Broker (workers): a running job needs more working memory (the lease grows).",
                                 "orchestrator.broker_working", (400, 401, 409))},
    "/broker/job_finished": {"post": ("Broker (workers): a job ended.", "orchestrator.broker_job_finished", (400, 401))},
    "/broker/turn": {"post": ("Broker (workers): a job is about to start; answered once no older request needs this worker's memory.",
                              "orchestrator.broker_turn", (400, 401))},
    "/broker/touch": {"post": ("Broker (workers): models were used (LRU).", "orchestrator.broker_touch", (400, 401))},
}
