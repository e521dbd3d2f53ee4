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

from common.errors import NOT_FOUND, WORKER_ERROR, WorkerRefused, error_response
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


def bearer_session(token: str) -> requests.Session:
    """A session that sends `Authorization: Bearer <token>` (nothing when `token` is empty)."""
    session = requests.Session()
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
