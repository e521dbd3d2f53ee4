"""Job records, their journal, and the one executor per worker process.

Every accepted job is written to the journal (one JSON file per job under STATE_DIR) before the
caller hears 202, so a worker that dies cannot lose it silently: on the next start, jobs the journal
shows as unfinished are marked failed with a reason and their callbacks sent.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from workers.runtime import media
from workers.runtime.errors import JobCancelled, JobFailed, MemoryUnavailable

log = logging.getLogger(__name__)

TERMINAL = ("completed", "failed", "cancelled")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class GeneratedAsset:
    """What an engine returns: pixels plus the parameters actually used for them."""
    kind: str                      # "image" or "video"
    frames: list                   # PIL images; one for an image
    metadata: dict
    fps: float | None = None


@dataclass
class JobRecord:
    job_id: str
    type: str
    user_id: str
    params: dict
    status: str = "queued"
    progress: dict = field(default_factory=lambda: {"stage": None, "step": 0, "total_steps": 0, "percent": 0.0})
    assets: list = field(default_factory=list)
    error: dict | None = None
    metadata: dict = field(default_factory=dict)
    created_at: str = field(default_factory=now_iso)
    started_at: str | None = None
    finished_at: str | None = None
    send_callback: bool = True
    callback: dict = field(default_factory=lambda: {"status": "not_sent", "attempts": 0})

    def public(self) -> dict:
        return {
            "job_id": self.job_id, "type": self.type, "user_id": self.user_id, "status": self.status,
            "progress": dict(self.progress), "assets": list(self.assets), "error": self.error,
            "metadata": self.metadata, "created_at": self.created_at, "started_at": self.started_at,
            "finished_at": self.finished_at, "callback": dict(self.callback),
        }

    def to_json(self) -> dict:
        data = self.public()
        data["params"] = self.params
        data["send_callback"] = self.send_callback
        return data

    @classmethod
    def from_json(cls, data: dict) -> "JobRecord":
        return cls(job_id=data["job_id"], type=data["type"], user_id=data["user_id"], params=data["params"],
                   status=data["status"], progress=data["progress"], assets=data["assets"], error=data["error"],
                   metadata=data["metadata"], created_at=data["created_at"], started_at=data["started_at"],
                   finished_at=data["finished_at"], send_callback=data.get("send_callback", True),
                   callback=data.get("callback", {"status": "not_sent", "attempts": 0}))


def callback_payload(record: JobRecord) -> dict:
    """The body of a job's one terminal callback (workers and the orchestrator send the same shape)."""
    return {
        "job_id": record.job_id, "status": record.status, "assets": record.assets,
        "error_message": record.error["message"] if record.error and record.status == "failed" else None,
        "metadata": dict(record.metadata, job_type=record.type, user_id=record.user_id),
    }


class JobJournal:
    """One JSON file per job, replaced atomically on every state change."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def write(self, record: JobRecord) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record.to_json(), fh)
        os.replace(tmp, self.directory / f"{record.job_id}.json")

    def load_all(self) -> list[JobRecord]:
        records = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                records.append(JobRecord.from_json(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, KeyError) as exc:
                log.error("unreadable job journal entry %s: %s", path.name, exc)
        return records


class JobContext:
    """Handed to an engine's run(): progress reporting and the cancellation check at step boundaries."""

    def __init__(self, runner: "JobRunner", record: JobRecord):
        self._runner = runner
        self._record = record
        self.cancel_requested = threading.Event()

    @property
    def job_id(self) -> str:
        return self._record.job_id

    def stage(self, name: str, total_steps: int | None = None) -> None:
        progress = {"stage": name, "step": 0, "total_steps": total_steps or 0, "percent": 0.0}
        self._runner._update(self._record, progress=progress)

    def on_step(self, step: int, total_steps: int) -> None:
        """Call after each denoising step; raises JobCancelled when the job was cancelled."""
        percent = round(100.0 * step / total_steps, 1) if total_steps else 0.0
        progress = dict(self._record.progress, step=step, total_steps=total_steps, percent=percent)
        self._runner._update(self._record, progress=progress, journal=False)
        self.check_cancelled()

    def check_cancelled(self) -> None:
        if self.cancel_requested.is_set():
            raise JobCancelled()


class JobRunner:
    """Accepts jobs, runs them one at a time in FIFO order on a single thread, stores their assets
    and sends their callbacks."""

    def __init__(self, worker: str, engine, host, storage, callbacks, journal: JobJournal):
        self.worker = worker
        self.engine = engine
        self.host = host
        self.storage = storage
        self.callbacks = callbacks
        self.journal = journal
        self._lock = threading.RLock()
        self._jobs: dict[str, JobRecord] = {}
        self._done: dict[str, threading.Event] = {}
        self._contexts: dict[str, JobContext] = {}
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._accepting = True
        self._running: str | None = None
        self._recover()
        self._thread = threading.Thread(target=self._loop, name=f"{worker}-executor", daemon=True)
        self._thread.start()

    # -- intake ---------------------------------------------------------------------------------
    def submit(self, job_id: str | None, job_type: str, user_id: str, params: dict, metadata: dict,
               send_callback: bool = True) -> tuple[JobRecord, bool]:
        """Queue a job. Returns (record, created); a known job id returns the existing job, uncreated."""
        with self._lock:
            if job_id and job_id in self._jobs:
                return self._jobs[job_id], False
            if not self._accepting:
                raise RuntimeError("shutting down")
            record = JobRecord(job_id=job_id or uuid.uuid4().hex, type=job_type, user_id=user_id,
                               params=params, metadata=metadata, send_callback=send_callback)
            record.progress["stage"] = "queued"
            self._jobs[record.job_id] = record
            self._done[record.job_id] = threading.Event()
            self.journal.write(record)
            self._queue.put(record.job_id)
            return record, True

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return self._jobs.get(job_id)

    def wait(self, job_id: str, timeout_s: float) -> bool:
        event = self._done.get(job_id)
        return event.wait(timeout_s) if event else False

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued or running job. Raises KeyError (unknown) or ValueError (already finished)."""
        with self._lock:
            record = self._jobs[job_id]
            if record.status in TERMINAL:
                raise ValueError(f"job {job_id} already {record.status}")
            if record.status == "queued":
                self._finish(record, "cancelled", error={"code": "cancelled", "message": "cancelled before it started"})
            else:
                self._contexts[job_id].cancel_requested.set()
            return record

    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False

    def fail_unfinished(self, reason: str) -> list[str]:
        """Fail every queued job and ask the running one to stop (used when shutdown grace runs out)."""
        failed = []
        with self._lock:
            for record in self._jobs.values():
                if record.status == "queued":
                    self._finish(record, "failed", error={"code": "worker_stopped", "message": reason})
                    failed.append(record.job_id)
                elif record.status == "processing" and record.job_id in self._contexts:
                    self._contexts[record.job_id].cancel_requested.set()
        return failed

    def idle(self) -> bool:
        with self._lock:
            return self._running is None and self._queue.empty()

    def queue_depth(self) -> int:
        return self._queue.qsize()

    # -- execution --------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            job_id = self._queue.get()
            with self._lock:
                record = self._jobs.get(job_id)
                if record is None or record.status != "queued":
                    continue  # cancelled while queued
                self._running = job_id
                context = JobContext(self, record)
                self._contexts[job_id] = context
                record.status = "processing"
                record.started_at = now_iso()
                self.journal.write(record)
            try:
                self._execute(record, context)
            except Exception:  # the executor thread must survive anything a job does
                log.exception("job %s crashed the executor", job_id)
                with self._lock:
                    if record.status not in TERMINAL:
                        self._finish(record, "failed", error={"code": "internal_error", "message": "unexpected executor error"})
            finally:
                with self._lock:
                    self._running = None
                    self._contexts.pop(job_id, None)

    def _execute(self, record: JobRecord, context: JobContext) -> None:
        params = record.params
        stored: list[str] = []
        try:
            context.stage("loading")
            models = self.engine.required_models(params)
            with self.host.use(models, working_bytes=self.engine.working_bytes(params)):
                context.check_cancelled()
                context.stage("generating", total_steps=params.get("steps"))
                outputs = self.engine.run(params, context)
            context.check_cancelled()
            context.stage("encoding")
            encoded = [self._encode(i, out) for i, out in enumerate(outputs)]
            context.stage("storing")
            assets = []
            for files, asset in encoded:
                for name, data, content_type in files:
                    stored.append(self.storage.put(self._path(record, name), data, content_type))
                asset["url"] = self._path(record, files[0][0])
                asset["thumbnail_url"] = self._path(record, files[1][0])
                assets.append(asset)
            with self._lock:
                record.assets = assets
                self._finish(record, "completed")
        except JobCancelled:
            self._cleanup(stored)
            with self._lock:
                self._finish(record, "cancelled", error={"code": "cancelled", "message": "cancelled while running"})
        except JobFailed as exc:
            self._cleanup(stored)
            with self._lock:
                self._finish(record, "failed", error={"code": exc.code, "message": exc.message})
        except MemoryUnavailable as exc:
            self._cleanup(stored)
            with self._lock:
                self._finish(record, "failed", error={"code": "insufficient_memory", "message": exc.message})
        except Exception as exc:
            log.exception("job %s failed", record.job_id)
            self._cleanup(stored)
            with self._lock:
                self._finish(record, "failed", error={"code": "internal_error",
                                                       "message": f"{type(exc).__name__}: {str(exc)[:500]}"})

    def _encode(self, index: int, output: GeneratedAsset) -> tuple[list[tuple[str, bytes, str]], dict]:
        if output.kind == "video":
            data = media.encode_mp4(output.frames, output.fps)
            main = (f"{index}.mp4", data, "video/mp4")
            thumb_source = output.frames[len(output.frames) // 2]
            fmt = "mp4"
        else:
            data = media.encode_png(output.frames[0])
            main = (f"{index}.png", data, "image/png")
            thumb_source = output.frames[0]
            fmt = "png"
        metadata = dict(output.metadata, format=fmt, file_size_bytes=len(data), asset_index=index)
        thumb = (f"{index}.thumb.webp", media.encode_thumbnail(thumb_source), "image/webp")
        return [main, thumb], {"type": output.kind, "metadata": metadata}

    @staticmethod
    def _path(record: JobRecord, name: str) -> str:
        return f"{record.user_id}/{record.job_id}/{name}"

    def _cleanup(self, stored: list[str]) -> None:
        for path in stored:
            try:
                self.storage.delete(path)
            except Exception:
                log.warning("could not remove partial output %s", path)

    # -- bookkeeping ------------------------------------------------------------------------------
    def _update(self, record: JobRecord, progress: dict, journal: bool = True) -> None:
        with self._lock:
            record.progress = progress
            if journal:
                self.journal.write(record)

    def _finish(self, record: JobRecord, status: str, error: dict | None = None) -> None:
        """Called with the lock held. Terminal state, journal, waiters, then the one callback."""
        record.status = status
        record.error = error
        record.finished_at = now_iso()
        if status == "completed":
            record.progress = dict(record.progress, stage="storing", percent=100.0)
        self.journal.write(record)
        self._done[record.job_id].set()
        self._send_callback(record)

    def _send_callback(self, record: JobRecord) -> None:
        send_terminal_callback(record, self.callbacks, self.journal, self._lock)

    def _recover(self) -> None:
        """Load the journal; fail what a previous process left unfinished, resend pending callbacks."""
        for record in self.journal.load_all():
            self._jobs[record.job_id] = record
            self._done[record.job_id] = threading.Event()
            if record.status not in TERMINAL:
                log.warning("job %s was %s when the worker stopped; marking it failed", record.job_id, record.status)
                self._finish(record, "failed", error={
                    "code": "worker_restarted",
                    "message": f"the worker process stopped while the job was {record.status}; it was not completed"})
            else:
                self._done[record.job_id].set()
                if record.callback.get("status") == "pending":
                    self._send_callback(record)


def send_terminal_callback(record: JobRecord, callbacks, journal: JobJournal, lock) -> None:
    """Queue a finished job's one callback and keep its delivery state in the journal
    (workers and the orchestrator both end jobs through this)."""
    if not record.send_callback or not callbacks.enabled:
        record.callback = {"status": "disabled", "attempts": 0}
        journal.write(record)
        return
    record.callback = {"status": "pending", "attempts": 0}
    journal.write(record)

    def done(delivered: bool, attempts: int) -> None:
        with lock:
            record.callback = {"status": "delivered" if delivered else "failed", "attempts": attempts}
            journal.write(record)

    callbacks.send(callback_payload(record), on_result=done)


def wait_until(predicate, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
