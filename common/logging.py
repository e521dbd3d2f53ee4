"""Structured logs: one JSON object per line on every process, with the job, worker, stage and request
id of the work that wrote it.

`configure_logging(process, level, fmt)` is called once at process start (a worker's app factory, the
orchestrator's main, gunicorn's log config). The context fields come from context variables set by
`log_context` (a job on the executor thread, a routed job's thread) and by `install_request_id` (an
HTTP request), so no call site passes them. `LOG_FORMAT=text` writes the same fields readably.

Prompts and chat messages are never logged at INFO or above; `describe_text` gives what may be
logged instead (length and a short hash, enough to match two log lines without the text).
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, ParamSpec, TypeVar

from pythonjsonlogger.json import JsonFormatter

if TYPE_CHECKING:
    from flask import Flask, Response

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
FORMATS = ("json", "text")

_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
_worker: contextvars.ContextVar[str | None] = contextvars.ContextVar("worker", default=None)
_stage: contextvars.ContextVar[str | None] = contextvars.ContextVar("stage", default=None)
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_VARS = {"job_id": _job_id, "worker": _worker, "stage": _stage, "request_id": _request_id}
CONTEXT_FIELDS = tuple(_VARS)

_process_name = "unconfigured"

_P = ParamSpec("_P")
_R = TypeVar("_R")


# ---- context ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Set job_id / worker / stage / request_id for the log lines written inside the block (this thread)."""
    unknown = set(fields) - set(_VARS)
    if unknown:
        raise TypeError(f"unknown log context fields {sorted(unknown)}")
    # Every field is set (unnamed ones to their current value), so a set_stage inside ends with the block.
    tokens = [(var, var.set(fields[name] if name in fields else var.get())) for name, var in _VARS.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def set_stage(stage: str | None) -> None:
    """The current job entered `stage` (inside its log_context)."""
    _stage.set(stage)


def current_request_id() -> str | None:
    return _request_id.get()


def new_request_id() -> str:
    return uuid.uuid4().hex


def valid_request_id(value: str | None) -> str | None:
    """A caller's X-Request-ID if it is short and plain (it lands in logs); None otherwise."""
    return value if value and _REQUEST_ID_RE.match(value) else None


def in_current_context(target: Callable[_P, _R]) -> Callable[_P, _R]:
    """Wrap a thread's target so it runs with the caller's log context (threads start with an empty one)."""
    ctx = contextvars.copy_context()

    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        return ctx.run(target, *args, **kwargs)
    return run


def describe_text(text: str | None) -> str:
    """What a log line may say about a prompt or a message: its length and a short hash, never the text."""
    if text is None:
        return "none"
    return f"{len(text)} chars, sha256 {hashlib.sha256(text.encode('utf-8', 'replace')).hexdigest()[:12]}"


# ---- formatting ------------------------------------------------------------------------------------------

class ContextFilter(logging.Filter):
    """Adds the process name and the context fields to every record (a handler filter, so records from
    every logger get them, including libraries' and gunicorn's)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.process_name = _process_name
        for name, var in _VARS.items():
            if not hasattr(record, name):
                setattr(record, name, var.get())
        if record.worker is None:  # type: ignore[attr-defined]
            record.worker = _process_name  # a worker's own lines; the orchestrator's outside a job
        return True


class JsonLineFormatter(JsonFormatter):
    """One JSON object per line: time, level, logger, process, message, the context fields, any
    `extra=` fields, and the exception text when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                         datefmt="%Y-%m-%dT%H:%M:%S")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"

    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record.pop("process_name", None)
        log_record["process"] = getattr(record, "process_name", _process_name)
        for name in CONTEXT_FIELDS:
            log_record[name] = getattr(record, name, None)


class TextFormatter(logging.Formatter):
    """The readable form (LOG_FORMAT=text): the context fields that are set, in brackets."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(process_name)s %(levelname)s %(name)s%(context)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS
                 if name != "worker" and getattr(record, name, None)]
        worker = getattr(record, "worker", None)
        if worker and worker != getattr(record, "process_name", _process_name):
            parts.insert(0, f"worker={worker}")
        record.context = f" [{' '.join(parts)}]" if parts else ""
        if not hasattr(record, "process_name"):
            record.process_name = _process_name
        return super().format(record)


def make_formatter(fmt: str = "json") -> logging.Formatter:
    if fmt not in FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {FORMATS}, got {fmt!r}")
    return JsonLineFormatter() if fmt == "json" else TextFormatter()


def make_handler(fmt: str = "json", stream: IO[str] | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    handler.addFilter(ContextFilter())
    handler._ourvidz = True  # type: ignore[attr-defined]
    return handler


def configure_logging(process: str, level: str = "INFO", fmt: str = "json", stream: IO[str] | None = None) -> None:
    """Route every logger of this process (root, and gunicorn's own, which do not propagate) through
    one handler in `fmt`; warnings.warn goes to the log too."""
    global _process_name
    _process_name = process
    handler = make_handler(fmt, stream)
    root = logging.getLogger()
    for old in list(root.handlers):
        # ours from an earlier call, and plain stream handlers (basicConfig's); a test runner's capture stays
        if getattr(old, "_ourvidz", False) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    gunicorn = logging.getLogger("gunicorn.error")
    if gunicorn.handlers:
        for old in list(gunicorn.handlers):
            gunicorn.removeHandler(old)
        gunicorn.addHandler(handler)
    logging.captureWarnings(True)


def gunicorn_logconfig(process: str, level: str = "INFO", fmt: str = "json") -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: its master's lines in the same format as the worker's."""
    global _process_name
    _process_name = process
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"line": {"()": make_formatter, "fmt": fmt}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "line", "filters": ["context"],
                                "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        # No access log (as before): readiness polls would fill it, and the app logs what matters per job.
        "loggers": {"gunicorn.error": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
                    "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False}},
    }


# ---- HTTP ------------------------------------------------------------------------------------------------

def install_request_id(app: Flask) -> None:
    """Every request runs with a request id: the caller's X-Request-ID when it is plain, a new one
    otherwise; the response carries it back in the same header."""
    from flask import g, request

    @app.before_request
    def _bind_request_id() -> None:
        rid = valid_request_id(request.headers.get(REQUEST_ID_HEADER)) or new_request_id()
        g.request_id = rid
        g.request_id_token = _request_id.set(rid)

    @app.after_request
    def _echo_request_id(response: Response) -> Response:
        rid = g.get("request_id")
        if rid:
            response.headers[REQUEST_ID_HEADER] = rid
        return response

    @app.teardown_request
    def _unbind_request_id(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            _request_id.reset(token)


# ---- progress of long work -----------------------------------------------------------------------------

class Progress:
    """Logs the progress of long work (building placeholder models, downloads, a worker's startup) at
    INFO: the first and last call, and at most one line every `every_s` in between."""

    def __init__(self, logger: logging.Logger, what: str, total: float | None = None, unit: str = "",
                 every_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.what, self.total, self.unit = logger, what, total, unit
        self.every_s = every_s
        self._clock = clock
        self._started = clock()
        self._last: float | None = None
        self._finished = False
        self.done = 0.0

    def update(self, done: float, note: str = "") -> None:
        self.done = done
        now = self._clock()
        finished = self.total is not None and done >= self.total
        if self._finished or (self._last is not None and not finished and now - self._last < self.every_s):
            return
        self._last, self._finished = now, finished
        self.logger.info("%s: %s%s", self.what, self._amount(), f" ({note})" if note else "",
                         extra={"progress_done": done, "progress_total": self.total,
                                "elapsed_s": round(now - self._started, 3)})

    def advance(self, amount: float = 1, note: str = "") -> None:
        self.update(self.done + amount, note)

    def finish(self, note: str = "") -> None:
        """The work is done: its last line (once), whatever the count reached."""
        if self.total is not None:
            self.done = max(self.done, self.total)
        if not self._finished:
            self._last = None
            self.update(self.done, note)
            self._finished = True

    def _amount(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            return f"{self.done:g}/{self.total:g}{unit} ({100.0 * self.done / self.total:.0f}%)"
        return f"{self.done:g}{unit}"
