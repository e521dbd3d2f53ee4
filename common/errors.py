"""Every error of the pod: the codes, the domain exceptions, and the one mapping of both to HTTP.

Domain code (the runtime, engines, the orchestrator's routing, pod and broker) raises the domain
exceptions below and knows nothing of HTTP. Route handlers raise `ApiError` for what only HTTP can
get wrong (a missing route, a bad query parameter). `register_error_handlers` is the one place that
turns either into the contract's `{"error": {"code", "message", "details"}}` body with a status;
workers and the orchestrator both install it. No traceback or secret ever reaches a response.
"""
from __future__ import annotations

import logging
from typing import Any, NamedTuple

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from configuration.requests.common import ValidationFailed

log = logging.getLogger(__name__)

# ---- error codes (the `code` of an error body, a failed job's `error.code`) ---------------------------
# request and HTTP
VALIDATION_ERROR = "validation_error"
INVALID_JSON = "invalid_json"
BAD_REQUEST = "bad_request"
UNAUTHORIZED = "unauthorized"
NOT_FOUND = "not_found"
METHOD_NOT_ALLOWED = "method_not_allowed"
CONFLICT = "conflict"
BODY_TOO_LARGE = "body_too_large"
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
HTTP_ERROR = "http_error"
INTERNAL_ERROR = "internal_error"
UNAVAILABLE = "unavailable"
# jobs
JOB_FAILED = "job_failed"
JOB_FINISHED = "job_finished"
JOB_ID_CONFLICT = "job_id_conflict"
CANCELLED = "cancelled"
TIMEOUT = "timeout"  # past its execution deadline (JOB_DEADLINE_*_S)
WORKER_RESTARTED = "worker_restarted"
WORKER_STOPPED = "worker_stopped"
STORAGE_FAILED = "storage_failed"
REDELIVERY_LIMIT = "redelivery_limit"  # a queue entry taken QUEUE_MAX_DELIVERIES times, never finished
# models and memory
MODEL_BUSY = "model_busy"
MODEL_NOT_CONFIGURED = "model_not_configured"
MODEL_MISCONFIGURED = "model_misconfigured"
INSUFFICIENT_MEMORY = "insufficient_memory"
MEMORY_BROKER_UNAVAILABLE = "memory_broker_unavailable"
# reference images
REFERENCE_REFUSED = "reference_refused"
REFERENCE_FETCH_FAILED = "reference_fetch_failed"
REFERENCE_INVALID = "reference_invalid"
# chat
OVERLOADED = "overloaded"
GENERATION_FAILED = "generation_failed"
EMPTY_ENHANCEMENT = "empty_enhancement"
# content policy (docs/POLICY.md)
CONTENT_POLICY = "content_policy"
# orchestrator
WORKER_UNAVAILABLE = "worker_unavailable"
WORKER_ERROR = "worker_error"
WORKER_DIED = "worker_died"
WORKER_LOST_JOB = "worker_lost_job"
ENHANCEMENT_FAILED = "enhancement_failed"
ORCHESTRATOR_STOPPED = "orchestrator_stopped"
ORCHESTRATOR_RESTARTED = "orchestrator_restarted"


class CodeReference(NamedTuple):
    """What docs/CONFIGURATION.md's generated error table says of a code: the HTTP statuses an error
    answer carries it with ("-": none, it is only a failed job's `error.code`) and what it means."""

    http: str
    meaning: str


# Every code above, once (tests/unit/test_reference.py checks that none is missing and that the domain
# exceptions' HTTP mapping below answers with a status named here); metrics' closed `code` label set.
CODES: dict[str, CodeReference] = {
    VALIDATION_ERROR: CodeReference("400", "The body or a query parameter breaks the schema or a rule; one detail "
                                    "per failing field (`path`: a JSON pointer). A refused queue entry's job too."),
    INVALID_JSON: CodeReference("400", "The body is not JSON, or not a JSON object."),
    BAD_REQUEST: CodeReference("400, 408", "A request the HTTP server refused; 408: the body stopped arriving "
                               "before its end."),
    UNAUTHORIZED: CodeReference("401", "Missing or wrong bearer key (or broker token)."),
    NOT_FOUND: CodeReference("404", "No such route, job, model or broker action."),
    METHOD_NOT_ALLOWED: CodeReference("405", "The route exists, not with this method (`Allow` names those it has)."),
    CONFLICT: CodeReference("409", "A conflict the HTTP server found."),
    BODY_TOO_LARGE: CodeReference("413", "The body exceeds MAX_BODY_MB."),
    UNSUPPORTED_MEDIA_TYPE: CodeReference("415", "A body in a media type the route does not read."),
    HTTP_ERROR: CodeReference("other", "Any other HTTP error status the server raises."),
    INTERNAL_ERROR: CodeReference("500", "An unexpected error (the log has the traceback; the answer never does); "
                                  "a failed job's code for an executor error too."),
    UNAVAILABLE: CodeReference("503", "Not ready or shutting down; try again after `Retry-After`."),
    JOB_FAILED: CodeReference("500", "A job that cannot complete, for the reason in its message (mostly a failed "
                              "job's code)."),
    JOB_FINISHED: CodeReference("409", "The job has already ended (a cancel of a finished job)."),
    JOB_ID_CONFLICT: CodeReference("409", "The job id names another caller's job, or one submitted another way."),
    CANCELLED: CodeReference("-", "The job was cancelled (HTTP cancel, or the app's `jobs` table)."),
    TIMEOUT: CodeReference("-", "The job ran past its execution deadline (JOB_DEADLINE_*_S)."),
    WORKER_RESTARTED: CodeReference("-", "The worker's process restarted while it held the job (journal recovery)."),
    WORKER_STOPPED: CodeReference("-", "The worker stopped (SIGTERM past SHUTDOWN_GRACE_S) while it held the job."),
    STORAGE_FAILED: CodeReference("-", "Storing the outputs failed; nothing of the job is kept."),
    REDELIVERY_LIMIT: CodeReference("-", "A queued job taken QUEUE_MAX_DELIVERIES times whose takers all stopped "
                                    "while holding it; failed without running it again."),
    MODEL_BUSY: CodeReference("409", "The model runs a job and cannot be unloaded now (`wait_s` waits)."),
    MODEL_NOT_CONFIGURED: CodeReference("-", "No usable path or config for the model (its `*_MODEL_PATH`)."),
    MODEL_MISCONFIGURED: CodeReference("-", "The model's files do not match what its configuration expects."),
    INSUFFICIENT_MEMORY: CodeReference("409", "The memory budget refuses the model or job (`details`: the numbers, "
                                       "`too_big` when it could never fit); a failed job's code too."),
    MEMORY_BROKER_UNAVAILABLE: CodeReference("503", "The orchestrator's memory broker cannot be asked; try again "
                                             "after `Retry-After`."),
    REFERENCE_REFUSED: CodeReference("-", "A reference image URL the fetcher refuses (scheme, private address)."),
    REFERENCE_FETCH_FAILED: CodeReference("-", "A reference image could not be fetched (network, status, size, "
                                          "FETCH_TIMEOUT_S)."),
    REFERENCE_INVALID: CodeReference("-", "A fetched reference is not a readable image."),
    OVERLOADED: CodeReference("503", "The chat model's queue is full (CHAT_MAX_QUEUE); try again after "
                              "`Retry-After`."),
    GENERATION_FAILED: CodeReference("500", "A chat generation failed (the worker log says why)."),
    EMPTY_ENHANCEMENT: CodeReference("422", "The enhanced prompt came out empty."),
    CONTENT_POLICY: CodeReference("422", "The content policy refused a text or an output (`details`: category, "
                                  "stage, tier; never the text); a failed job's code too."),
    WORKER_UNAVAILABLE: CodeReference("503", "The orchestrator cannot reach the worker, or it is not ready."),
    WORKER_ERROR: CodeReference("4xx, 500, 503", "A worker answered the orchestrator with an error that had no code "
                                "of its own (a 4xx is passed on), or refused a cancel."),
    WORKER_DIED: CodeReference("-", "A routed job's worker died while it held the job."),
    WORKER_LOST_JOB: CodeReference("-", "A routed job's worker no longer knows the job."),
    ENHANCEMENT_FAILED: CodeReference("-", "The chat worker could not enhance a routed job's prompt."),
    ORCHESTRATOR_STOPPED: CodeReference("-", "The orchestrator stopped while it routed the job."),
    ORCHESTRATOR_RESTARTED: CodeReference("-", "The orchestrator restarted while it routed the job."),
}

RETRY_AFTER_S = 5


# ---- domain exceptions ---------------------------------------------------------------------------------
class DomainError(Exception):
    """An error with a code and a message a caller may read. `retry_after_s` is set when trying again
    later can succeed."""

    code = INTERNAL_ERROR

    def __init__(self, message: str, code: str | None = None, details: Any = None,
                 retry_after_s: int | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details: Any = details if details is not None else []
        self.retry_after_s = retry_after_s


class JobFailed(DomainError):
    """A job cannot complete for a reason the caller should read (bad reference image, ...)."""

    code = JOB_FAILED


class JobIdConflict(DomainError):
    """A job id already names another caller's job (or one submitted another way): never answered with
    that job."""

    code = JOB_ID_CONFLICT


class ContentPolicyRefused(JobFailed):
    """The content policy refused a text or an output (docs/POLICY.md). The message and details name the
    category, stage and tier, never the text: 422 at HTTP, a failed job with this code elsewhere."""

    code = CONTENT_POLICY

    def __init__(self, category: str, stage: str, tier: str, rule: str | None = None):
        super().__init__(f"content policy: {category}",
                         details=[{"category": category, "stage": stage, "tier": tier, "rule": rule}])
        self.category, self.stage, self.tier = category, stage, tier


class JobCancelled(Exception):
    """Raised at a step boundary once a job has been asked to cancel."""


class ModelBusy(DomainError):
    """A model is running a job and cannot be unloaded now."""

    code = MODEL_BUSY


class MemoryUnavailable(DomainError):
    """GPU memory for a model cannot be granted: too big ever (`too_big`), busy workers hold it past the
    timeout, or (code MEMORY_BROKER_UNAVAILABLE) the memory broker cannot be asked."""

    code = INSUFFICIENT_MEMORY

    def __init__(self, message: str, details: dict | None = None, too_big: bool = False,
                 broker_unreachable: bool = False):
        # `details` here is one dict: the numbers of the refusal (need, free, usable bytes, ...).
        super().__init__(message, MEMORY_BROKER_UNAVAILABLE if broker_unreachable else None, details or {},
                         retry_after_s=RETRY_AFTER_S if broker_unreachable else None)
        self.too_big = too_big


class Unavailable(DomainError):
    """The service cannot take this now (shutting down, not ready); try again later."""

    code = UNAVAILABLE


class WorkerUnavailable(DomainError):
    """The orchestrator cannot reach a worker, or the worker is not ready."""

    code = WORKER_UNAVAILABLE


class WorkerRefused(DomainError):
    """A worker answered a request with an error: its code, message and details are passed on; `status`
    is the worker's HTTP status (4xx are the caller's to fix, anything else is the worker's trouble)."""

    def __init__(self, status: int, code: str, message: str, details: list[dict] | None = None):
        super().__init__(message, code, details, retry_after_s=None if 400 <= status < 500 else RETRY_AFTER_S)
        self.status = status


# ---- HTTP ----------------------------------------------------------------------------------------------
class ApiError(Exception):
    """An error only the HTTP layer can find (unknown route argument, bad query parameter, ...)."""

    def __init__(self, status: int, code: str, message: str, details: list | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details or []
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, details: list | None = None,
                   headers: dict | None = None) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": details or []}})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def http_error(exc: DomainError) -> ApiError:
    """The one mapping of a domain error to its HTTP answer."""
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
    if isinstance(exc, ContentPolicyRefused):
        return ApiError(422, exc.code, exc.message, exc.details)
    if isinstance(exc, MemoryUnavailable):
        if exc.code == MEMORY_BROKER_UNAVAILABLE:  # the broker could not be asked: try again later
            return ApiError(503, exc.code, exc.message, [exc.details], headers)
        return ApiError(409, INSUFFICIENT_MEMORY, exc.message, [dict(exc.details, too_big=exc.too_big)])
    if isinstance(exc, JobIdConflict):
        return ApiError(409, exc.code, exc.message, [{"path": "/id", "message": exc.message}])
    if isinstance(exc, ModelBusy):
        return ApiError(409, exc.code, f"{exc.message}; retry when the job has finished or pass wait_s")
    if isinstance(exc, WorkerRefused):
        return ApiError(exc.status if 400 <= exc.status < 500 else 503, exc.code, exc.message, exc.details, headers)
    if isinstance(exc, (Unavailable, WorkerUnavailable)):
        return ApiError(503, exc.code, exc.message, exc.details, headers)
    return ApiError(500, exc.code, exc.message, exc.details, headers)


_HTTP_CODES = {400: BAD_REQUEST, 401: UNAUTHORIZED, 404: NOT_FOUND, 405: METHOD_NOT_ALLOWED, 409: CONFLICT,
               413: BODY_TOO_LARGE, 415: UNSUPPORTED_MEDIA_TYPE, 503: UNAVAILABLE}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.errorhandler(DomainError)
    def _domain(exc: DomainError) -> Response:
        return _api_error(http_error(exc))

    @app.errorhandler(ValidationFailed)
    def _validation(exc: ValidationFailed) -> Response:
        return error_response(400, VALIDATION_ERROR, "the request body is invalid", exc.details)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = {413: f"request body exceeds the {app.config.get('MAX_CONTENT_LENGTH', 0)} byte cap"}.get(
            status, exc.description or exc.name)
        # werkzeug's own headers of the answer (a 405's `Allow`), less its content type
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return error_response(status, _HTTP_CODES.get(status, HTTP_ERROR), message, headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, INTERNAL_ERROR, "internal error; see the worker log")
