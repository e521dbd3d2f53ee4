"""Small helpers both sides use to talk HTTP: timestamps, the loopback URL of a local service, a
requests session that carries the pod's bearer token, reading another service's error body, and the
`OPTIONS` answer every app gives."""
from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import requests
from flask import Flask, Response, request
from flask.json.provider import DefaultJSONProvider
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

from common.errors import NOT_FOUND, WORKER_ERROR, WorkerRefused, error_response
from common.serve import KEEPALIVE_S
from configuration.settings import Settings


class InsertionOrderJSON(DefaultJSONProvider):
    """Flask's JSON answers with their keys in the order the code builds them (`job_id` first), not sorted:
    `app.json = InsertionOrderJSON(app)` in every app."""
    sort_keys = False


def iso_time(epoch: float | None = None) -> str:
    """UTC ISO 8601 with milliseconds, of `epoch` (seconds) or of now."""
    return datetime.fromtimestamp(time.time() if epoch is None else epoch, UTC).isoformat(
        timespec="milliseconds")


def now_iso() -> str:
    return iso_time()


def local_url(settings: Settings, port: int) -> str:
    """How a process of this pod reaches another one on `port`: BIND_HOST, or loopback for a wildcard bind."""
    host = "127.0.0.1" if settings.bind_host in ("0.0.0.0", "::", "") else settings.bind_host  # noqa: S104 (recognises a wildcard bind; binds nothing)
    return f"http://{host}:{port}"


class _FreshConnection(HTTPConnection):
    """A kept-alive connection that counts as dropped once idle for `max_idle_s`, half the pod's server
    keep-alive (KEEPALIVE_S): the pool then opens a new one. A request sent as the server closes its idle
    connection is reset ("Connection reset by peer") and, a POST, cannot safely be sent again; one the client
    stops reusing first never meets that close."""

    max_idle_s = KEEPALIVE_S / 2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._answered_at: float | None = None

    def connect(self) -> None:
        self._answered_at = None
        super().connect()

    def getresponse(self):  # type: ignore[no-untyped-def]  # urllib3's own signature and return type
        response = super().getresponse()
        self._answered_at = time.monotonic()
        return response

    @property
    def is_connected(self) -> bool:
        if self._answered_at is not None and time.monotonic() - self._answered_at > self.max_idle_s:
            return False
        return super().is_connected


class _FreshConnectionPool(HTTPConnectionPool):
    ConnectionCls = _FreshConnection


class _FreshConnectionAdapter(HTTPAdapter):
    """requests' adapter whose plain-HTTP pools hold `_FreshConnection`s (the pod's processes talk plain HTTP
    on loopback or the pod's network)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {**self.poolmanager.pool_classes_by_scheme,
                                                   "http": _FreshConnectionPool}


def pod_session() -> requests.Session:
    """A session for talking to the pod's own processes: a kept-alive connection is not reused once idle
    for half their keep-alive (`_FreshConnection`)."""
    session = requests.Session()
    session.mount("http://", _FreshConnectionAdapter())
    return session


def bearer_session(token: str) -> requests.Session:
    """A session to the pod's processes (`pod_session`) that sends `Authorization: Bearer <token>`
    (nothing when `token` is empty)."""
    session = pod_session()
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def error_of(response: requests.Response) -> dict[str, Any]:
    """The `error` object of an error body in the contract's form; {} for anything else."""
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}


def refusal(response: requests.Response, who: str) -> WorkerRefused:
    """A non-success answer of another service, as the domain error that passes it on."""
    error = error_of(response)
    return WorkerRefused(response.status_code, error.get("code", WORKER_ERROR),
                         error.get("message", f"{who} answered HTTP {response.status_code}"),
                         error.get("details", []))


def install_options(app: Flask) -> None:
    """`OPTIONS` on any route answers 204 with the route's `Allow` header, without a key and without running
    its handler: the app's endpoint discovery probes OPTIONS with no key and counts a 2xx as "present". An
    unknown path stays a 404. Install after the body cap (an oversized body is drained and refused first)
    and before authentication."""

    @app.before_request
    def _answer_options() -> Response | None:
        if request.method != "OPTIONS":
            return None
        adapter = app.create_url_adapter(request)
        allowed = sorted(adapter.allowed_methods()) if adapter is not None else []
        if not allowed:
            return error_response(404, NOT_FOUND, "no such route")
        return Response(status=204, headers={"Allow": ", ".join(allowed)})
