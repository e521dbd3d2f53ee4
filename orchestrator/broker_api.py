"""The memory broker's HTTP API, for the pod's own workers only (workers/runtime/broker_client.py).

It is not on the public port: the orchestrator serves it on a loopback port of its own, with its own
threads, so requests waiting on the public port (`POST /jobs?wait=`) can never take the threads a
worker's lease request needs, and it answers only the bearer of a token the orchestrator draws at each
start and hands its workers in their environment (BROKER_TOKEN). A holder of the public API key
reaches none of it: the public port answers 404 to `/broker/*`.

Every request names a worker of this pod and, where it leases, reports or releases memory for a model,
a model that worker is configured with (400 otherwise): nobody leases 47 GB for a model that does not
exist.
"""
from __future__ import annotations

import hmac
import socket
from collections.abc import Mapping
from typing import Any, Protocol

from flask import Blueprint, Flask, current_app, jsonify, request
from werkzeug.wrappers import Response

from common import errors
from common.auth import bearer_token
from common.body import install_body_cap, json_body
from common.errors import ApiError, error_response, register_error_handlers
from common.http import InsertionOrderJSON, install_options
from configuration import requests as request_models
from configuration.requests.orchestrator import BrokerCall
from configuration.settings import Settings
from orchestrator.broker_service import MemoryBroker

bp = Blueprint("broker", __name__)

MAX_BODY_BYTES = 64 * 1024


class BrokerOwner(Protocol):
    """What the broker's app reads of the pod (orchestrator/pod.py `Pod`, which imports this module): the
    broker, the settings, the workers it may serve and the token they bear."""

    @property
    def broker(self) -> MemoryBroker: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def supervisors(self) -> Mapping[str, object]: ...
    @property
    def broker_token(self) -> str: ...


def _pod() -> BrokerOwner:
    return current_app.extensions["pod"]


def _broker_body(action: str) -> Any:
    """The call as its validated model (configuration/requests/orchestrator.py), from a worker of this pod, about
    models of that worker."""
    call: BrokerCall = request_models.check(f"orchestrator.broker_{action}", json_body(), _pod().settings)
    if call.worker not in _pod().supervisors:
        raise ApiError(400, errors.VALIDATION_ERROR, f"unknown worker {call.worker!r}",
                       [{"path": "/worker", "message": f"must be one of {sorted(_pod().supervisors)}"}])
    single = getattr(call, "model", None)
    models = [single] if single is not None else list(getattr(call, "models", []))
    for index, model in enumerate(models):
        try:
            _pod().broker.check_model(call.worker, model)
        except ValueError as exc:
            path = "/model" if single is not None else f"/models/{index}"
            raise ApiError(400, errors.VALIDATION_ERROR, str(exc), [{"path": path, "message": str(exc)}]) from None
    return call


@bp.post("/broker/<action>")
def broker(action: str) -> Response:
    broker = _pod().broker
    timeout_s = _pod().settings.lease_timeout_s
    handlers = {
        "hello": lambda b: broker.hello(b.worker, b.pid),
        "acquire": lambda b: broker.acquire(b.worker, b.model, b.estimate_bytes, b.working_bytes, timeout_s),
        "admit": lambda b: broker.admit(b.worker, b.need_bytes),
        "loaded": lambda b: broker.loaded(b.worker, b.model, b.resident_bytes),
        "release": lambda b: broker.release(b.worker, b.model),
        "job_started": lambda b: broker.job_started(b.worker, b.working_bytes, timeout_s),
        "working": lambda b: broker.grow_working(b.worker, b.working_bytes, timeout_s),
        "job_finished": lambda b: broker.job_finished(b.worker),
        "touch": lambda b: broker.touch(b.worker, b.models),
        "turn": lambda b: broker.wait_turn(b.worker, timeout_s),
    }
    if action not in handlers:
        raise ApiError(404, errors.NOT_FOUND, f"no broker action {action!r}")
    handlers[action](_broker_body(action))  # MemoryUnavailable: 409 with the numbers (common/errors.py)
    return jsonify({"ok": True})


def create_broker_app(pod: BrokerOwner) -> Flask:
    """The broker's app: only `/broker/*`, only for the bearer of `pod.broker_token`."""
    app = Flask("ourvidz-broker")
    app.json = InsertionOrderJSON(app)
    app.extensions["pod"] = pod
    register_error_handlers(app)
    install_body_cap(app, MAX_BODY_BYTES)
    install_options(app)  # as on every port of the pod: 204 with Allow, no token needed, no handler run
    expected = pod.broker_token.encode()

    @app.before_request
    def _require_token() -> Response | None:
        if not hmac.compare_digest(bearer_token(request.headers.get("Authorization", "")), expected):
            return error_response(401, errors.UNAUTHORIZED, "the memory broker serves only this pod's workers",
                                  headers={"WWW-Authenticate": "Bearer"})
        return None

    app.register_blueprint(bp)
    return app


def broker_socket() -> socket.socket:
    """A listening socket on a free loopback port for the broker's server (bound before the workers start,
    so their environment can name it)."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock
