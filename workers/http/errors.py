"""Uniform JSON errors: {"error": {"code", "message", "details"}}; never a traceback or a secret."""
from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from configuration.schemas import ValidationFailed

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details or []
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, details: list | None = None, headers: dict | None = None):
    response = jsonify({"error": {"code": code, "message": message, "details": details or []}})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               409: "conflict", 413: "body_too_large", 415: "unsupported_media_type", 503: "unavailable"}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.errorhandler(ValidationFailed)
    def _validation(exc: ValidationFailed):
        return error_response(400, "validation_error", "the request body is invalid", exc.details)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        status = exc.code or 500
        message = {413: f"request body exceeds the {app.config.get('MAX_CONTENT_LENGTH', 0)} byte cap"}.get(
            status, exc.description or exc.name)
        return error_response(status, _HTTP_CODES.get(status, "http_error"), message)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; see the worker log")
