"""Reading request bodies: JSON objects only, with errors in the contract's form."""
from __future__ import annotations

from flask import request

from workers.http.errors import ApiError


def json_body(optional: bool = False) -> dict:
    raw = request.get_data(cache=True)
    if not raw.strip():
        if optional:
            return {}
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    try:
        import json
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc.msg}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "validation_error", "request body must be a JSON object",
                       [{"path": "", "message": f"expected an object, got {type(body).__name__}"}])
    return body


def query_float(name: str, minimum: float, maximum: float) -> float | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, "validation_error", f"query parameter {name} must be a number",
                       [{"path": f"?{name}", "message": "must be a number"}]) from None
    if not minimum <= value <= maximum:
        raise ApiError(400, "validation_error", f"query parameter {name} out of range",
                       [{"path": f"?{name}", "message": f"must be in [{minimum}, {maximum}]"}])
    return value
