"""Bearer authentication on every endpoint except the health probes."""
from __future__ import annotations

import hmac
from collections.abc import Iterable

from flask import Flask, request
from werkzeug.wrappers import Response

from common.errors import UNAUTHORIZED, error_response

OPEN_PATHS = {"/health", "/ready"}
_AUTHENTICATED = "ourvidz.authenticated"  # request.environ: the request carried a valid key (or none is configured)


def bearer_token(authorization: str) -> bytes:
    """The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive, RFC 9110
    section 11.1); b"" for any other header."""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return b""
    return token.strip(" ").encode("utf-8", "surrogateescape")


def install_auth(app: Flask, api_keys: str | Iterable[str], open_paths: Iterable[str] = ()) -> None:
    """Every configured key (Settings.api_keys: WORKER_API_KEY and WORKER_API_KEYS) is accepted, since the
    app's callers hold different keys. `open_paths`: more GET paths served without a key (the ops page's
    HTML; /metrics with METRICS_PUBLIC)."""
    keys = [api_keys] if isinstance(api_keys, str) else list(api_keys)
    expected = [k.encode() for k in keys if k]
    if not expected:
        app.before_request(lambda: request.environ.__setitem__(_AUTHENTICATED, True))
        return  # only allowed on a loopback bind (Settings.check refuses otherwise)
    public = OPEN_PATHS | set(open_paths)

    @app.before_request
    def _require_bearer() -> Response | None:
        matched = _matches_any(bearer_token(request.headers.get("Authorization", "")), expected)
        request.environ[_AUTHENTICATED] = matched
        if request.path in public and request.method in ("GET", "HEAD"):
            return None
        if not matched:
            return error_response(401, UNAUTHORIZED, "missing or invalid bearer token",
                                  headers={"WWW-Authenticate": "Bearer"})
        return None


def _matches_any(token: bytes, expected: list[bytes]) -> bool:
    """Compare with every key, each in constant time, with no early exit."""
    matched = False
    for key in expected:
        matched |= hmac.compare_digest(token, key)
    return matched


def authenticated() -> bool:
    """Whether this request carried a valid key: an open path (`/ready`) shows its details only then."""
    return bool(request.environ.get(_AUTHENTICATED, False))
