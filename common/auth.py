"""Bearer authentication on every endpoint except the health probes."""
from __future__ import annotations

import hmac

from flask import Flask, request
from werkzeug.wrappers import Response

from common.errors import UNAUTHORIZED, error_response

OPEN_PATHS = {"/health", "/ready"}


def install_auth(app: Flask, api_key: str) -> None:
    if not api_key:
        return  # only allowed on a loopback bind (Settings.check refuses otherwise)
    expected = f"Bearer {api_key}".encode()

    @app.before_request
    def _require_bearer() -> Response | None:
        if request.path in OPEN_PATHS and request.method in ("GET", "HEAD"):
            return None
        supplied = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(supplied, expected):
            return error_response(401, UNAUTHORIZED, "missing or invalid bearer token",
                                  headers={"WWW-Authenticate": "Bearer"})
        return None
