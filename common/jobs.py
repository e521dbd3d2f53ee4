"""Job records and their journal, shared by the workers' executor and the orchestrator's router.

Every accepted job is written to the journal (one JSON file per job under STATE_DIR) before the
caller hears 202, so a process that dies cannot lose it silently: on the next start, jobs the journal
shows as unfinished are marked failed with a reason and their callbacks sent. A finished job's one
terminal callback goes through `send_terminal_callback`, which keeps its delivery state in the journal:
the journal is the callback outbox (attempts, last error, next attempt; a restart resumes them).

One live process per journal: a process holds an exclusive lock on the journal's directory for its whole
life, and a second one (a restart while the old process still drains its jobs) waits for it before it
reads anything. What a process does with its records (claiming ids, ending jobs once, recovery after a
restart, retention, the ops page's summaries) is common/job_table.py's JobTable, used by both.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from common import strict_json
from common.http import iso_time, now_iso
from common.job_status import TERMINAL, CallbackStatus, JobStatus

log = logging.getLogger(__name__)


class CallbackSink(Protocol):
    """Where the jobs' callbacks go, as the job table and the worker's job runner use it (common/callbacks.py
    `CallbackSender` is the one; the operator views read the sender itself): `send` only enqueues, the
    results come back through `on_result` and `on_attempt`, and `flush` waits for the backlog at shutdown."""

    @property
    def enabled(self) -> bool: ...
    @property
    def processing(self) -> bool: ...   # CALLBACK_PROCESSING: a job's start is notified too

    def send(self, payload: dict, on_result: Callable[[bool, int], None] | None = None,
             max_attempts: int = 0, attempts: int = 0, since: float | None = None,
             on_attempt: Callable[[int, str, float], None] | None = None) -> bool: ...
    def flush(self, timeout_s: float) -> bool: ...


@dataclass
class JobRecord:
    job_id: str
    type: str
    user_id: str
    params: dict
    status: JobStatus = JobStatus.QUEUED
    progress: dict = field(default_factory=lambda: {"stage": None, "step": 0, "total_steps": 0, "percent": 0.0})
    assets: list = field(default_factory=list)
    error: dict | None = None
    metadata: dict = field(default_factory=dict)
    created_at: str = field(default_factory=now_iso)
    started_at: str | None = None
    finished_at: str | None = None
    send_callback: bool = True
    callback: dict = field(default_factory=lambda: {"status": CallbackStatus.NOT_SENT, "attempts": 0})
    request_id: str | None = None  # of the request that submitted it (X-Request-ID; in every log line of the job)

    def public(self) -> dict:
        return {
            "job_id": self.job_id, "type": self.type, "user_id": self.user_id, "status": self.status,
            "progress": dict(self.progress), "assets": list(self.assets), "error": self.error,
            "metadata": self.metadata, "created_at": self.created_at, "started_at": self.started_at,
            "finished_at": self.finished_at, "callback": dict(self.callback), "request_id": self.request_id,
        }

    def summary(self, worker: str) -> dict:
        """What the ops page shows of a job: no prompt, no parameters, no user."""
        progress = self.progress or {}
        return {"job_id": self.job_id, "type": self.type, "worker": worker, "status": self.status,
                "stage": progress.get("stage"), "step": progress.get("step"),
                "total_steps": progress.get("total_steps"),
                "percent": 100.0 if self.status == JobStatus.COMPLETED else progress.get("percent"),
                "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
                "error_code": (self.error or {}).get("code") if self.status != JobStatus.COMPLETED else None}

    def to_json(self) -> dict:
        data = self.public()
        data["params"] = self.params
        data["send_callback"] = self.send_callback
        return data

    @classmethod
    def from_json(cls, data: dict) -> JobRecord:
        return cls(job_id=data["job_id"], type=data["type"], user_id=data["user_id"], params=data["params"],
                   status=JobStatus(data["status"]), progress=data["progress"], assets=data["assets"],
                   error=data["error"], metadata=data["metadata"], created_at=data["created_at"],
                   started_at=data["started_at"], finished_at=data["finished_at"],
                   send_callback=data.get("send_callback", True),
                   callback=data.get("callback", {"status": CallbackStatus.NOT_SENT, "attempts": 0}),
                   request_id=data.get("request_id"))


def callback_payload(record: JobRecord) -> dict:
    """The body of a job's one terminal callback (workers and the orchestrator send the same shape)."""
    return {
        "job_id": record.job_id, "status": record.status, "assets": record.assets,
        "error_message": record.error["message"] if record.error and record.status == JobStatus.FAILED else None,
        "metadata": dict(record.metadata, job_type=record.type, user_id=record.user_id, **app_fields(record)),
    }


def processing_payload(record: JobRecord) -> dict:
    """The optional `processing` callback sent when a job starts (CALLBACK_PROCESSING)."""
    return {"job_id": record.job_id, "status": JobStatus.PROCESSING, "assets": [], "error_message": None,
            "metadata": {"job_type": record.type, "user_id": record.user_id, "started_at": record.started_at}}


def send_processing_callback(record: JobRecord, callbacks: CallbackSink) -> None:
    """The optional start notice (CALLBACK_PROCESSING), for a job that sends its own callbacks (a worker's
    direct or queued job, a routed job on the orchestrator): one attempt, so it can never arrive after the
    terminal callback."""
    if record.send_callback and callbacks.enabled and callbacks.processing:
        callbacks.send(processing_payload(record), max_attempts=1)


def app_fields(record: JobRecord) -> dict:
    """The `metadata` keys the app's job-callback reads (docs/API.md), from the parameters as used:
    `frame_num` (frames in the video file: the app's duration is ceil(frame_num / 16) s), `steps` and
    `num_inference_steps`, `guidance_scale`, `denoise_strength` and `reference_mode` / `exact_copy_mode`
    for jobs with a reference, `error_type` (the error code) for failed jobs."""
    params = record.metadata.get("parameters") or {}
    context = (record.metadata.get("caller_context") or {}).get("metadata") or {}
    fields: dict[str, Any] = {}
    if "steps" in params:
        fields["steps"] = fields["num_inference_steps"] = params["steps"]
    if "guidance_scale" in params:
        fields["guidance_scale"] = params["guidance_scale"]
    reference = params.get("reference") if isinstance(params.get("reference"), dict) else None
    if reference and "denoise_strength" in reference:
        fields["denoise_strength"] = reference["denoise_strength"]
    elif reference and "conditioning_scale" in reference:  # WAN: conditioning = 1 - denoise
        fields["denoise_strength"] = round(1.0 - reference["conditioning_scale"], 6)
    exact_copy = bool(reference and reference.get("mode") == "exact_copy") or context.get("exact_copy_mode") is True
    if params:
        fields["exact_copy_mode"] = exact_copy
    if reference or exact_copy:
        fields["reference_mode"] = "copy" if exact_copy else "modify"
    videos = [a for a in record.assets if a.get("type") == "video"]
    if videos and "frames" in videos[0].get("metadata", {}):
        fields["frame_num"] = videos[0]["metadata"]["frames"]
    if record.status == JobStatus.FAILED and record.error:
        fields["error_type"] = record.error.get("code")
    if "template_name" in context:
        fields["template_name"] = context["template_name"]
    return fields


LOCK_FILE = ".lock"
LOCK_WAIT_LOG_S = 10.0
_HELD_LOCKS: dict[str, int] = {}          # journal directory -> lock fd held by this process
_HELD_LOCKS_GUARD = threading.Lock()


def _lock_directory(directory: Path) -> None:
    """Hold `directory`'s journal lock for the life of this process; wait (logging who holds it) while
    another live process does. Within one process the lock is taken once (tests reopen journals)."""
    key = str(directory.resolve())
    with _HELD_LOCKS_GUARD:
        if key in _HELD_LOCKS:
            return
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        waited = 0.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if waited % LOCK_WAIT_LOG_S == 0:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    log.warning("journal %s is in use by process %s (still finishing its jobs); waiting for it",
                                directory, holder)
                time.sleep(0.5)
                waited += 0.5
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD_LOCKS[key] = fd


class JobJournal:
    """One JSON file per job, replaced atomically on every state change; one live process per journal."""

    def __init__(self, directory: Path, retention_days: float = 0.0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.retention_days = retention_days
        _lock_directory(self.directory)

    def write(self, record: JobRecord) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(strict_json.dumps(record.to_json()))  # never a bare NaN: the record is read back as JSON
        os.replace(tmp, self.directory / f"{record.job_id}.json")

    def delete(self, job_id: str) -> None:
        (self.directory / f"{job_id}.json").unlink(missing_ok=True)

    def expired(self, record: JobRecord, now: float | None = None) -> bool:
        """A finished job past the retention period whose callback is not still to be delivered."""
        if not self.retention_days or record.status not in TERMINAL or not record.finished_at:
            return False
        if record.callback.get("status") == CallbackStatus.PENDING:
            return False
        cutoff = iso_time((time.time() if now is None else now) - self.retention_days * 86400)
        return record.finished_at < cutoff

    def load_all(self) -> list[JobRecord]:
        records = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                records.append(JobRecord.from_json(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, KeyError) as exc:
                log.error("unreadable job journal entry %s: %s", path.name, exc)
        return records


def send_terminal_callback(record: JobRecord, callbacks: CallbackSink, journal: JobJournal,
                           lock: AbstractContextManager[Any]) -> None:
    """Queue a finished job's one callback and keep its delivery state in the journal (workers and the
    orchestrator both end jobs through this). A record whose callback is already `pending` (a restart)
    resumes it: the attempts so far and the start of its retry horizon come from the journal."""
    if not record.send_callback or not callbacks.enabled:
        record.callback = {"status": CallbackStatus.DISABLED, "attempts": 0}
        journal.write(record)
        return
    previous = record.callback if record.callback.get("status") == CallbackStatus.PENDING else {}
    attempts = int(previous.get("attempts", 0))
    since = previous.get("since") or now_iso()
    record.callback = {**previous, "status": CallbackStatus.PENDING, "attempts": attempts, "since": since}
    journal.write(record)

    def attempted(count: int, error: str, retry_in_s: float) -> None:
        with lock:
            record.callback = {"status": CallbackStatus.PENDING, "attempts": count, "since": since,
                               "last_error": error, "next_attempt_at": iso_time(time.time() + retry_in_s)}
            journal.write(record)

    def done(delivered: bool, count: int) -> None:
        with lock:
            status = CallbackStatus.DELIVERED if delivered else CallbackStatus.FAILED
            record.callback = {"status": status, "attempts": count, "since": since,
                               **({} if delivered else {"last_error": record.callback.get("last_error")})}
            journal.write(record)

    callbacks.send(callback_payload(record), on_result=done, attempts=attempts,
                   since=_epoch(since), on_attempt=attempted)


def _epoch(iso: str) -> float:
    from datetime import datetime
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return time.time()


def wait_until(predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
