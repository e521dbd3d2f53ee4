"""Request bodies: JSON objects only, query numbers in range, and the body size cap (413), with errors
in the contract's form."""
from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING

from flask import Flask, request
from werkzeug.exceptions import ClientDisconnected
from werkzeug.wrappers import Response

from common import strict_json
from common.errors import BAD_REQUEST, BODY_TOO_LARGE, INVALID_JSON, VALIDATION_ERROR, ApiError, error_response

if TYPE_CHECKING:
    from wsgiref.types import InputStream


def json_body(optional: bool = False) -> dict:
    try:
        raw = request.get_data(cache=True)
    except (TimeoutError, ClientDisconnected):
        raise _body_too_slow() from None
    if not raw.strip():
        if optional:
            return {}
        raise ApiError(400, INVALID_JSON, "request body must be a JSON object")
    try:
        body = strict_json.loads(raw)  # UTF-8 only, no NaN/Infinity, bounded depth and numbers
    except strict_json.InvalidJson as exc:
        raise ApiError(400, INVALID_JSON, f"request body is not valid JSON: {exc.reason}") from None
    if not isinstance(body, dict):
        raise ApiError(400, VALIDATION_ERROR, "request body must be a JSON object",
                       [{"path": "", "message": f"expected an object, got {type(body).__name__}"}])
    return body


_NUMBER = re.compile(r"-?(0|[1-9][0-9]{0,15})(\.[0-9]{1,16})?")
BOOLEAN_VALUES = {"1": True, "true": True, "0": False, "false": False}


def query_float(name: str, minimum: float, maximum: float) -> float | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if not _NUMBER.fullmatch(raw):  # no "nan", "inf", "1e999", " 5": what the document calls a number
        raise ApiError(400, VALIDATION_ERROR, f"query parameter {name} must be a number",
                       [{"path": f"?{name}", "message": "must be a number"}])
    value = float(raw)
    if not minimum <= value <= maximum:
        raise ApiError(400, VALIDATION_ERROR, f"query parameter {name} out of range",
                       [{"path": f"?{name}", "message": f"must be in [{minimum}, {maximum}]"}])
    return value


def body_with_query(body: dict, text: tuple[str, ...], numbers: dict[str, tuple[float, float]]) -> dict:
    """`body` with the query's values of the same fields (`text` as given, `numbers` as query_float in
    their range). A field given twice in the query, or differently in the query and the body, is a 400:
    no value is read and silently ignored."""
    merged = dict(body)
    for name in (*text, *numbers):
        values = request.args.getlist(name)
        if not values:
            continue
        if len(values) > 1:
            raise ApiError(400, VALIDATION_ERROR, f"query parameter {name} given more than once",
                           [{"path": f"?{name}", "message": "give it once"}])
        value = query_float(name, *numbers[name]) if name in numbers else values[0]
        if name in merged and merged[name] != value:
            raise ApiError(400, VALIDATION_ERROR, f"{name} differs between the query and the body",
                           [{"path": f"?{name}", "message": f"the body says {merged[name]!r}"}])
        merged[name] = value
    return merged


def query_bool(name: str) -> bool:
    """A flag in the query: 1/true or 0/false, exactly; absent is false. Anything else is a 400, never
    read as one or the other (`?dry_run=True` once queued a real job)."""
    raw = request.args.get(name)
    if raw is None:
        return False
    if raw not in BOOLEAN_VALUES:
        raise ApiError(400, VALIDATION_ERROR, f"query parameter {name} must be 1, true, 0 or false",
                       [{"path": f"?{name}", "message": "must be one of 1, true, 0, false"}])
    return BOOLEAN_VALUES[raw]


DRAIN_LIMIT_BYTES = 64 * 1024 * 1024


def install_body_cap(app: Flask, max_bytes: int) -> None:
    """Answer 413 to bodies over `max_bytes`. A declared oversized body is read and discarded first
    (up to DRAIN_LIMIT_BYTES), so the client, still sending, gets the 413 rather than a reset
    connection; MAX_CONTENT_LENGTH still guards chunked bodies without a length."""
    app.config["MAX_CONTENT_LENGTH"] = max_bytes

    @app.before_request
    def _refuse_oversized_body() -> Response | None:
        try:
            return _check_body_size(max_bytes)
        except (TimeoutError, ClientDisconnected):
            raise _body_too_slow() from None


def _body_too_slow() -> ApiError:
    """A body that stopped arriving: a read timed out (READ_TIMEOUT_S on a worker, workers/gunicorn_worker.py;
    werkzeug's stream turns the timeout into ClientDisconnected) or the client went away. On gunicorn the
    connection is closed after the answer: the rest of that body must not be read as the next request (nor
    drained, which would hold the thread again); waitress buffers bodies and forbids hop-by-hop headers."""
    headers = {"Connection": "close"} if "gunicorn.socket" in request.environ else None
    return ApiError(408, BAD_REQUEST, "the request body stopped arriving before its end", headers=headers)


def _check_body_size(max_bytes: int) -> Response | None:
    """413 for a body over the cap (a declared one drained first, a chunked one read up to the cap)."""
    length = request.content_length
    if length is None:
        if not _read_unsized_body(max_bytes):
            return None
    elif length <= max_bytes:
        return None
    elif length <= DRAIN_LIMIT_BYTES:
        _read(request.environ["wsgi.input"], length, keep=False)
    response = error_response(413, BODY_TOO_LARGE, f"request body exceeds the {max_bytes} byte cap")
    if "gunicorn.socket" in request.environ:
        # gunicorn reads the body as the app does: what was not drained must not be read as the next
        # request. waitress (the orchestrator) has buffered the whole body already and forbids
        # hop-by-hop headers from the app (a 500 if one is set).
        response.headers["Connection"] = "close"
    return response


def _read(stream: InputStream, limit: int, keep: bool = True) -> bytes:
    """Up to `limit` bytes of `stream` (less at its end); with `keep` false they are discarded as read."""
    parts, remaining = [], limit
    while remaining > 0:
        chunk = stream.read(min(remaining, 64 * 1024))
        if not chunk:
            break
        if keep:
            parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def _read_unsized_body(max_bytes: int) -> bool:
    """A body without Content-Length (chunked, the server decoding the chunks): read it here, up to the
    cap. True when it runs past the cap (what follows, up to DRAIN_LIMIT_BYTES, is read and discarded so
    the client gets the 413). Otherwise the body read becomes the request's sized body: werkzeug would
    cut a chunked body at MAX_CONTENT_LENGTH without a word, and the app would parse the cut (400
    invalid_json instead of 413)."""
    environ = request.environ
    if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower() or not environ.get("wsgi.input_terminated"):
        return False  # no body, or none the server delimits (werkzeug then reads none)
    body = _read(environ["wsgi.input"], max_bytes + 1)
    if len(body) > max_bytes:
        _read(environ["wsgi.input"], DRAIN_LIMIT_BYTES, keep=False)
        return True
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return False
