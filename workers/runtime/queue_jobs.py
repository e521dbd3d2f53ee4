"""The app's queued jobs into the worker's one runtime: the JobSink the Redis intake feeds.

A queued payload is mapped onto our own generation body (configuration/requests/app_payload.py),
storage-path references are downloaded with the service key, and the body goes through the same
admission as POST /generate. A payload that fails any of that still becomes a job: it ends
`failed` at once, journaled, with a signed callback whose `error_message` names the app's field,
so the app hears about it and the queue never blocks on it.
"""
from __future__ import annotations

import base64
import io
import logging
from typing import TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from common import errors
from common.errors import JobFailed, MemoryUnavailable
from common.job_status import JobStatus
from common.queues import connect, consumer_id, queue_name
from common.supabase import SupabaseError, download, make_client
from configuration.requests.app_payload import AppJob, from_app_payload
from configuration.requests.common import ValidationFailed
from workers.runtime.admission import admit, check_generation, job_metadata
from workers.runtime.fetch import FetchFailed, FetchRefused, InvalidImage
from workers.runtime.queue_intake import QueueIntake

if TYPE_CHECKING:
    from workers.runtime.worker_state import WorkerState

log = logging.getLogger(__name__)
_IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def start_queue_intake(state: WorkerState) -> QueueIntake | None:
    queue = queue_name(state.name, state.settings)
    if queue is None or state.runner is None:
        return None
    settings = state.settings
    sink = QueueJobSink(state, queue)
    intake = QueueIntake(connect(settings.redis_url, settings.queue_block_s), queue, consumer_id(state.name, settings),
                         sink, info={"worker": state.name, "pid": state.pid},
                         heartbeat_ttl_s=settings.queue_heartbeat_ttl_s, reap_interval_s=settings.queue_reap_interval_s,
                         block_s=settings.queue_block_s, max_deliveries=settings.queue_max_deliveries,
                         max_entry_bytes=settings.max_body_bytes)
    state.runner.idle_hooks.append(intake.notify)
    log.info("taking jobs from Redis list %s as consumer %s", queue, intake.consumer_id)
    return intake.start()


class QueueJobSink:
    def __init__(self, state: WorkerState, queue: str):
        if state.runner is None:  # start_queue_intake only builds a sink for workers with a job runner
            raise RuntimeError("a queue sink on a worker without a job runner")
        self.state = state
        self.runner = state.runner
        self.queue = queue
        settings = state.settings
        self._supabase = (make_client(settings.supabase_url, settings.supabase_service_key, settings.fetch_timeout_s)
                          if settings.supabase_url and settings.supabase_service_key else None)

    # -- JobSink ----------------------------------------------------------------------------------
    def can_take(self) -> bool:
        # A job fetching its references does not make the worker busy (up to the runner's fetch threads):
        # a dripping reference host holds its own job only, not the queue behind it.
        return not self.state.shutting_down and self.runner.can_start()

    def job_status(self, job_id: str) -> str | None:
        record = self.runner.get(job_id)
        return record.status if record else None

    def conflict(self, job_id: str, payload: dict) -> str | None:
        """The per-user id ownership of POST /generate (409 there), for queued entries: only the same
        user's job from this same queue may come back under its id (a redelivery)."""
        record = self.runner.get(job_id)
        if record is None:
            return None
        if (record.metadata.get("source") or {}).get("queue") != self.queue:
            how = "over HTTP" if record.send_callback else "through the orchestrator"
            return f"a job submitted {how} has it"
        if record.user_id != _user_of(payload):
            return "another user's job has it"
        return None

    def submit(self, job_id: str, payload: dict) -> None:
        s = self.state
        job: AppJob | None = None
        if self.runner.cancelled_in_app(job_id):  # the start check (APP_CANCEL_CHECK): nothing fetched or run
            log.info("queued job %s was cancelled in the app before it started; not running it", job_id)
            job_type = str(payload["type"]) if isinstance(payload.get("type"), str) else "unknown"
            self.runner.reject(job_id, job_type, _user_of(payload),
                               {"code": errors.CANCELLED, "message": "cancelled in the app before it started"},
                               {"source": {"queue": self.queue}}, status=JobStatus.CANCELLED)
            return
        try:
            job = from_app_payload(s.name, payload, s.settings)
            fetched = self._resolve_storage_references(job)
            try:
                params = check_generation(s.request_schema, s.settings, self.runner.engine, job.body)
            except ValidationFailed as exc:
                raise job.app_error(exc) from None
            try:
                admit(self.runner.engine, s.host, params)
            except MemoryUnavailable as exc:
                if exc.too_big:
                    raise
                # The memory broker cannot be asked now: the job waits for its lease when it starts.
                log.warning("queued job %s admitted without a memory check: %s", job_id, exc.message)
        except ValidationFailed as exc:
            message = "; ".join(f"{d['path'] or '/'}: {d['message']}" for d in exc.details)
            self._reject(job_id, payload, job, errors.VALIDATION_ERROR, f"invalid job payload: {message}",
                         validation_errors=exc.details)
            return
        except (JobFailed, MemoryUnavailable) as exc:
            self._reject(job_id, payload, job, exc.code or errors.JOB_FAILED, exc.message)
            return
        metadata = job_metadata(job.body, params, **self._context(job), references_from_storage=fetched or None)
        self.runner.submit(job_id, job.body["type"], _user_of(payload), params,
                           {k: v for k, v in metadata.items() if v is not None}, app_job=True)

    def reject(self, job_id: str, payload: dict, code: str, message: str) -> None:
        self._reject(job_id, payload, None, code, message)

    # -- helpers ----------------------------------------------------------------------------------
    def _context(self, job: AppJob | None) -> dict[str, Any]:
        return {"source": {"queue": self.queue}, "caller_context": job.caller_context if job else None,
                "size": job.size if job else None, "intake": (job.notes or None) if job else None}

    def _reject(self, job_id: str, payload: dict, job: AppJob | None, code: str, message: str, **extra: Any) -> None:
        log.warning("queued job %s refused (%s)", job_id, code)
        metadata = {k: v for k, v in {**self._context(job), **extra}.items() if v is not None}
        job_type = str(payload["type"]) if isinstance(payload.get("type"), str) else "unknown"
        self.runner.reject(job_id, job_type, _user_of(payload), {"code": code, "message": message}, metadata)

    def _resolve_storage_references(self, job: AppJob) -> dict[str, str]:
        """Download storage-path references (checked to lie in the job's own folder) with the service key
        and put them in the body as data: URLs. Returns app field -> storage path, for the record."""
        fetched = {}
        max_bytes = int(self.state.settings.fetch_max_mb * 1024 * 1024)
        for pointer, (bucket, path) in job.storage_references.items():
            app_field = job.app_path(pointer)
            if self._supabase is None:
                raise FetchRefused(f"{app_field}: a storage path reference needs SUPABASE_URL and the service key")
            try:
                data = download(self._supabase, bucket, path, max_bytes)
            except SupabaseError as exc:
                raise FetchFailed(f"{app_field}: {exc.message}") from None
            _, section, name = pointer.split("/")
            job.body[section][name] = _data_url(data, app_field)
            fetched[app_field] = f"{bucket}/{path}"
        return fetched


def _user_of(payload: dict) -> str:
    """The user a queued job is recorded under (the record, storage paths, id ownership)."""
    return payload["user_id"] if isinstance(payload.get("user_id"), str) else "anonymous"


def _data_url(data: bytes, app_field: str) -> str:
    try:
        kind = Image.open(io.BytesIO(data)).format or ""
    except (UnidentifiedImageError, OSError):
        kind = ""
    if kind not in _IMAGE_TYPES:
        raise InvalidImage(f"{app_field}: the stored object is not a PNG, JPEG or WEBP image")
    return f"data:{_IMAGE_TYPES[kind]};base64,{base64.b64encode(data).decode()}"
