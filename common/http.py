"""Small helpers both sides use to talk HTTP: timestamps, the loopback URL of a local service, a
requests session that carries the pod's bearer token, and reading another service's error body."""
from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import requests
from flask.json.provider import DefaultJSONProvider

from common.errors import WORKER_ERROR, WorkerRefused
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
    host = "127.0.0.1" if settings.bind_host in ("0.0.0.0", "::", "") else settings.bind_host
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
