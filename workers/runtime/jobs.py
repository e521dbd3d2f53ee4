"""The one executor per worker process: jobs run one at a time, in order, on a single thread.

It claims a job, runs its engine (reporting progress, honouring cancellation and deadlines) and ends it;
what becomes of the engine's outputs (safety check, encoding, thumbnails, provenance, storage, clean-up)
is the output pipeline's, workers/runtime/outputs.py. The jobs' lifecycle (the table of records, ending a
job once, journal, callbacks, recovery, retention) is common/job_table.py's JobTable, the orchestrator's
routed jobs' too: every accepted job is journaled before the caller hears 202, and a worker that restarts
fails what its previous process left unfinished, with a reason, and sends the callbacks.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from PIL import Image

from common import errors
from common.errors import JobCancelled, JobFailed, JobIdConflict, MemoryUnavailable
from common.http import now_iso
from common.job_status import TERMINAL, JobStatus
from common.job_table import JobTable
from common.jobs import CallbackSink, JobJournal, JobRecord, send_processing_callback
from common.logging import current_request_id, describe_text, log_context, new_request_id, set_stage
from common.metrics import StageTimer, process_metrics
from configuration.settings import Settings
from workers import devices
from workers.engines.base import GeneratedAsset
from workers.runtime.fetch import fetch_image
from workers.runtime.job_watch import JobWatch, deadline_of
from workers.runtime.models import HostedEngine, ModelHost
from workers.runtime.outputs import OutputPipeline, made_by
from workers.runtime.storage import Storage

if TYPE_CHECKING:
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline

log = logging.getLogger(__name__)

FETCH_THREADS = 4  # reference images fetched at once, outside the executor
# A stuck engine's process exits with this status (not gunicorn's 3 or 4, which stop the master instead).
STUCK_EXIT_STATUS = 75
STUCK_CALLBACK_FLUSH_S = 5.0


# An engine's parameters, as its own methods declare them: the TypedDict its worker's request model builds
# (configuration/requests/). The runtime is the same for every worker and holds them as the job record's
# JSON object, so it knows an engine as JobEngine[Any].
P_contra = TypeVar("P_contra", contravariant=True)


@runtime_checkable
class JobEngine(HostedEngine, Protocol[P_contra]):
    """What the executor and the admission (workers/runtime/admission.py) need of an engine that runs queued
    jobs, besides its models' lifecycle (workers/engines/base.py `JobEngineBase`: SDXL, WAN). The chat
    engine is not one: it has no `run` (its worker serves no /generate)."""
    settings: Settings
    device: str

    def check_request(self, params: P_contra) -> None: ...
    def reference_urls(self, params: P_contra) -> dict[str, str]: ...
    def required_models(self, params: P_contra) -> list[str]: ...
    def working_bytes(self, params: P_contra) -> int: ...
    def run(self, params: P_contra, ctx: JobContext) -> list[GeneratedAsset]: ...
    def pipeline_of(self, params: P_contra) -> DiffusionPipeline | None: ...


class JobContext:
    """Handed to an engine's run(): progress reporting, the cancellation check at step boundaries, and
    the job's reference images (`references`, role -> PIL image), fetched before memory was leased."""

    def __init__(self, runner: JobRunner, record: JobRecord) -> None:
        self._runner = runner
        self._record = record
        self.cancel_requested = threading.Event()
        # Set with cancel_requested when the worker stops the job (shutdown grace over): it ends `failed`
        # (worker_stopped) with this reason, not `cancelled`: nobody cancelled it.
        self.stop_reason: str | None = None
        # "timeout" (past its deadline) or "app_cancel" (cancelled in the app's jobs table), set with
        # cancel_requested by the job watch (workers/runtime/job_watch.py) unless a stop was asked first.
        self.ended_by: str | None = None
        self.references: dict[str, Image.Image] = {}
        self.timer = StageTimer()   # seconds per stage (metrics, provenance)
        # Set for the one retry after a CUDA out-of-memory error: engines then use their memory-saving modes.
        self.memory_saving = False

    @property
    def job_id(self) -> str:
        return self._record.job_id

    def stage(self, name: str, total_steps: int | None = None) -> None:
        """Enter a stage. With `total_steps` the step count starts again at 0 of that many; without, the
        steps reached so far are kept (a completed record shows the denoising steps it ran)."""
        if total_steps is None:
            progress = dict(self._record.progress, stage=name)
        else:
            progress = {"stage": name, "step": 0, "total_steps": total_steps, "percent": 0.0}
        if name != self._record.progress.get("stage"):
            self.timer.enter(name)
            set_stage(name)
        self._runner._update(self._record, progress=progress)

    def on_step(self, step: int, total_steps: int) -> None:
        """Call after each denoising step; raises JobCancelled when the job was cancelled."""
        percent = round(100.0 * step / total_steps, 1) if total_steps else 0.0
        progress = dict(self._record.progress, step=step, total_steps=total_steps, percent=percent)
        self._runner._update(self._record, progress=progress, journal=False)
        self.check_cancelled()

    def stop(self, ended_by: str) -> None:
        """Stop the job at its next step boundary because of `ended_by` (a stop asked earlier wins)."""
        with self._runner._lock:
            if not self.cancel_requested.is_set():
                self.ended_by = ended_by
                self.cancel_requested.set()

    def check_cancelled(self) -> None:
        if self.cancel_requested.is_set():
            raise JobCancelled()


class JobRunner:
    """Accepts jobs, runs them one at a time in FIFO order on a single thread, stores their assets
    and sends their callbacks.

    A job with reference images has them fetched first, on a small pool of its own threads, and enters
    the executor's queue once they are here: a slow or hostile reference host holds that job alone (for
    at most FETCH_TIMEOUT_S), never the executor and the jobs behind it; a cancel stops the fetch."""

    def __init__(self, worker: str, engine: JobEngine[Any], host: ModelHost, storage: Storage, callbacks: CallbackSink,
                 journal: JobJournal, exit_process: Callable[[int], object] = os._exit) -> None:
        self.worker = worker
        self.engine = engine
        self.host = host
        self.callbacks = callbacks
        self.journal = journal
        # The records, their done-events, ends, recovery and retention; its lock also guards this runner's
        # own state (contexts, fetches, the running job), so a finish never waits on a second lock.
        self.jobs: JobTable[JobRecord] = JobTable(worker, journal, callbacks, lambda record: record,
                                                  on_end=self._observe_end, on_ending=self._storing)
        self._lock = self.jobs.lock
        self.outputs = OutputPipeline(worker, engine.settings, engine.device, storage, self._lock)
        self._contexts: dict[str, JobContext] = {}
        self._queue: queue.Queue[str] = queue.Queue()
        self._accepting = True
        self._running: str | None = None
        self.idle_hooks: list[Callable[[], None]] = []  # called when the executor may take more work (queue intake)
        self._fetching: dict[str, threading.Event] = {}   # job id -> its fetch's cancel event
        self._references: dict[str, dict[str, Image.Image]] = {}  # job id -> fetched images, until it runs
        self._fetch_pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix=f"{worker}-fetch")
        self._metrics = process_metrics()
        self._accepted_at: dict[str, float] = {}          # job id -> monotonic time accepted (queue wait, duration)
        self._app_jobs: set[str] = set()                  # the app's queued jobs (its cancel is read while they run)
        self._exit_process = exit_process                 # how a stuck engine's process ends (tests record it)
        self._watch = JobWatch(worker, engine.settings, self._replace_stuck)
        self.jobs.recover(lambda record: record, self._fail_restarted)
        self._thread = threading.Thread(target=self._loop, name=f"{worker}-executor", daemon=True)
        self._thread.start()

    # -- intake ---------------------------------------------------------------------------------
    def submit(self, job_id: str | None, job_type: str, user_id: str, params: dict[str, Any], metadata: dict[str, Any],
               send_callback: bool = True, app_job: bool = False) -> tuple[JobRecord, bool]:
        """Queue a job. Returns (record, created); the same caller repeating a job id gets the existing job,
        uncreated; an id that names another user's job, or one submitted the other way (directly vs routed
        by the orchestrator, which sends the callback itself), is JobIdConflict. `app_job`: one of the app's
        queued jobs, whose status in the app's `jobs` table is read while it runs (APP_CANCEL_CHECK)."""
        with self._lock:
            existing = self._claim(job_id, user_id, send_callback)
            if existing is not None:
                return existing, False
            if not self._accepting:
                raise RuntimeError("shutting down")
            record = JobRecord(job_id=job_id or uuid.uuid4().hex, type=job_type, user_id=user_id,
                               params=params, metadata=metadata, send_callback=send_callback,
                               request_id=current_request_id() or new_request_id())
            record.progress["stage"] = "queued"
            self.jobs.add(record)
            self._accepted_at[record.job_id] = time.monotonic()
            if app_job:
                self._app_jobs.add(record.job_id)
            self.journal.write(record)
            self._metrics.job_submitted(self.worker, job_type)
            with log_context(job_id=record.job_id, request_id=record.request_id, worker=self.worker, stage="queued"):
                log.info("job accepted: %s, prompt %s", job_type, describe_text(params.get("prompt")),
                         extra={"job_type": job_type, "queue_depth": self._queue.qsize()})
            urls = self.engine.reference_urls(params)
            if urls:
                record.progress["stage"] = "fetching"
                self._fetching[record.job_id] = threading.Event()
                self._fetch_pool.submit(self._prefetch, record, urls, self._fetching[record.job_id])
            else:
                self._queue.put(record.job_id)
            return record, True

    def check_id(self, job_id: str | None, user_id: str, send_callback: bool = True) -> None:
        """JobIdConflict when `submit` would refuse this id (a dry run checks it too)."""
        with self._lock:
            self._claim(job_id, user_id, send_callback)

    def _claim(self, job_id: str | None, user_id: str, send_callback: bool) -> JobRecord | None:
        """The table's claim, and one check of the worker's own: a job's id names one way of submitting it."""
        record = self.jobs.claim(job_id, user_id)
        if record is None:
            return None
        if record.send_callback != send_callback:
            how = "directly to this worker" if record.send_callback else "through the orchestrator"
            raise JobIdConflict(f"job id {job_id!r} is already in use by a job submitted {how}")
        return record

    def get(self, job_id: str) -> JobRecord | None:
        return self.jobs.get(job_id)

    def wait(self, job_id: str, timeout_s: float) -> bool:
        return self.jobs.wait(job_id, timeout_s)

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued or running job. Raises KeyError (unknown) or ValueError (already finished)."""
        with self._lock:
            record = self.jobs[job_id]
            if record.status in TERMINAL:
                raise ValueError(f"job {job_id} already {record.status}")
            self._metrics.job_cancelled(self.worker, record.progress.get("stage") or record.status)
            if record.status == JobStatus.QUEUED:
                self._stop_fetch(job_id)
                self.jobs.finish(record, JobStatus.CANCELLED,
                                 error={"code": errors.CANCELLED, "message": "cancelled before it started"})
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
            for record in self.jobs.entries():
                if record.status == JobStatus.QUEUED:
                    self._stop_fetch(record.job_id)
                    self.jobs.finish(record, JobStatus.FAILED, error={"code": errors.WORKER_STOPPED, "message": reason})
                    failed.append(record.job_id)
                elif record.status == JobStatus.PROCESSING and record.job_id in self._contexts:
                    self._contexts[record.job_id].stop_reason = reason
                    self._contexts[record.job_id].cancel_requested.set()
        return failed

    def idle(self) -> bool:
        with self._lock:
            return self._running is None and self._queue.empty() and not self._fetching

    def can_start(self) -> bool:
        """One more job would start now: nothing running or waiting for the executor, and a fetch thread
        free. Jobs fetching their references do not count (the queue intake takes the next entry while a
        slow reference host holds one job), but at most FETCH_THREADS of them."""
        with self._lock:
            return self._running is None and self._queue.empty() and len(self._fetching) < FETCH_THREADS

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def running_count(self) -> int:
        with self._lock:
            return 0 if self._running is None else 1

    def summaries(self, limit: int) -> list[dict[str, Any]]:
        """The ops page's view: unfinished jobs and the `limit` most recently finished, without prompts."""
        return self.jobs.summaries(limit, lambda record: self.worker)

    def reject(self, job_id: str, job_type: str, user_id: str, error: dict[str, Any], metadata: dict[str, Any],
               status: JobStatus = JobStatus.FAILED) -> JobRecord:
        """A job that cannot run (a queued payload that fails validation, ...) ends `failed` at once,
        journaled and with its one callback like any other job, so its caller hears why; one the app
        cancelled before it started ends `status="cancelled"` the same way. A known job id returns the
        existing job."""
        with self._lock:
            existing = self.jobs.entry(job_id)
            if existing is not None:
                return existing
            record = JobRecord(job_id=job_id, type=job_type, user_id=user_id, params={}, metadata=metadata)
            self.jobs.add(record)
            self.jobs.finish(record, status, error=error)
            return record

    def cancelled_in_app(self, job_id: str) -> bool:
        """The app's cancel, read before one of its queued jobs is accepted (APP_CANCEL_CHECK)."""
        return self._watch.cancelled_in_app(job_id)

    def _notify_idle(self) -> None:
        for hook in self.idle_hooks:
            try:
                hook()
            except Exception:  # a listener must never break the executor
                log.exception("idle hook failed")

    # -- reference images ------------------------------------------------------------------------
    def _prefetch(self, record: JobRecord, urls: dict[str, str], cancelled: threading.Event) -> None:
        """On a fetch thread: the job's references, then the job into the executor's queue; a reference
        that cannot be used fails the job here, without it ever holding the executor."""
        error: dict[str, Any] | None = None
        references: dict[str, Image.Image] = {}
        try:
            for role, url in urls.items():
                references[role] = fetch_image(url, self.engine.settings, cancelled=cancelled)
        except JobCancelled:
            pass  # cancel() or fail_unfinished() has ended the job
        except JobFailed as exc:
            error = {"code": exc.code, "message": exc.message}
        except Exception as exc:  # a fetch thread must end the job whatever happens
            log.exception("job %s: fetching its references failed", record.job_id)
            error = {"code": errors.INTERNAL_ERROR, "message": f"fetching the references failed: {type(exc).__name__}"}
        with self._lock:
            self._fetching.pop(record.job_id, None)
            if record.status != JobStatus.QUEUED:
                return
            if error is not None:
                self.jobs.finish(record, JobStatus.FAILED, error=error)
                return
            self._references[record.job_id] = references
            record.progress = dict(record.progress, stage="queued")
            self._queue.put(record.job_id)

    def _stop_fetch(self, job_id: str) -> None:
        """Called with the lock held: a fetch in progress for the job stops within a read."""
        cancelled = self._fetching.get(job_id)
        if cancelled is not None:
            cancelled.set()

    # -- execution --------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            job_id = self._queue.get()
            with self._lock:
                record = self.jobs.entry(job_id)
                if record is None or record.status != JobStatus.QUEUED:
                    continue  # cancelled while queued
                self._running = job_id
                context = JobContext(self, record)
                self._contexts[job_id] = context
                record.status = JobStatus.PROCESSING
                record.started_at = now_iso()
                self.journal.write(record)
                send_processing_callback(record, self.callbacks)
                accepted = self._accepted_at.get(job_id)
                if accepted is not None:  # fetching the references counts as waiting
                    context.timer.add("queue_wait", time.monotonic() - accepted)
                self._metrics.job_started(self.worker, record.type)
                self._watch.start(job_id, context.stop, self._deadline_s(record), job_id in self._app_jobs)
            try:
                with log_context(job_id=job_id, request_id=record.request_id, worker=self.worker):
                    self._execute(record, context)
            except Exception:  # the executor thread must survive anything a job does
                log.exception("job %s crashed the executor", job_id)
                with self._lock:
                    if record.status not in TERMINAL:
                        error = {"code": errors.INTERNAL_ERROR, "message": "unexpected executor error"}
                        self.jobs.finish(record, JobStatus.FAILED, error=error)
            finally:
                self._watch.finished(job_id)
                with self._lock:
                    self._running = None
                    self._contexts.pop(job_id, None)
                    self._app_jobs.discard(job_id)
                self._notify_idle()

    def _execute(self, record: JobRecord, context: JobContext) -> None:
        """Lease the job's models, run the engine, hand its outputs to the output pipeline, end the job."""
        params = record.params
        stored: list[str] = []  # what the output pipeline stored, removed if the job fails to end after it
        try:
            context.stage("loading")
            with self._lock:
                context.references = self._references.pop(record.job_id, {})  # fetched before it was queued
            models = self.engine.required_models(params)
            with self.host.use(models, working_bytes=self.engine.working_bytes(params)):
                context.check_cancelled()
                context.stage("generating", total_steps=params.get("steps"))
                generated = self._run_engine(params, context)
                made = made_by(models, self.host.fingerprints, self.engine.pipeline_of(params))
            context.check_cancelled()
            delivered = self.outputs.deliver(record, generated, made, context)
            stored = delivered.stored
            with self._lock:
                record.assets = delivered.assets
                self.jobs.finish(record, JobStatus.COMPLETED)
        except JobCancelled:
            self.outputs.remove(stored)
            with self._lock:
                if context.ended_by == "timeout":
                    self._metrics.child(self._metrics.job_timeouts, self.worker).inc()
                    self.jobs.finish(record, JobStatus.FAILED, error={
                        "code": errors.TIMEOUT, "message": f"the job ran past its deadline of "
                                                           f"{self._deadline_s(record):.0f}s and was stopped"})
                elif context.ended_by == "app_cancel":
                    self.jobs.finish(record, JobStatus.CANCELLED,
                                     error={"code": errors.CANCELLED, "message": "cancelled in the app"})
                elif context.stop_reason is not None:
                    self.jobs.finish(record, JobStatus.FAILED,
                                     error={"code": errors.WORKER_STOPPED, "message": context.stop_reason})
                else:
                    self.jobs.finish(record, JobStatus.CANCELLED,
                                     error={"code": errors.CANCELLED, "message": "cancelled while running"})
        except JobFailed as exc:
            self.outputs.remove(stored)
            with self._lock:
                self.jobs.finish(record, JobStatus.FAILED, error={"code": exc.code, "message": exc.message})
        except MemoryUnavailable as exc:
            self.outputs.remove(stored)
            with self._lock:
                self.jobs.finish(record, JobStatus.FAILED,
                                 error={"code": errors.INSUFFICIENT_MEMORY, "message": exc.message})
        except Exception as exc:
            log.exception("job %s failed", record.job_id)
            self.outputs.remove(stored)
            with self._lock:
                self.jobs.finish(record, JobStatus.FAILED, error={"code": errors.INTERNAL_ERROR,
                                                           "message": f"{type(exc).__name__}: {str(exc)[:500]}"})

    def _run_engine(self, params: dict[str, Any], context: JobContext) -> list[GeneratedAsset]:
        """engine.run, after which the device's cached blocks go back to the driver (the broker then sees only
        what is allocated). A CUDA out-of-memory error frees the cache and retries once with the engine's
        memory-saving modes (VAE slicing/tiling); a second one is MemoryUnavailable (insufficient_memory,
        409 at HTTP), not an internal error."""
        for attempt in (1, 2):
            try:
                return self.engine.run(params, context)
            except Exception as exc:
                if not devices.is_out_of_memory(exc):
                    raise
                message = str(exc).splitlines()[0][:300]
            finally:
                devices.release_cached_memory(self.engine.device)
            if attempt == 1:
                log.warning("job %s: CUDA out of memory (%s); retrying once with memory-saving modes",
                            context.job_id, message)
                context.memory_saving = True
        raise MemoryUnavailable("the device ran out of memory during the job, also with memory-saving modes: "
                                f"{message}", {"device": self.engine.device})

    # -- bookkeeping ------------------------------------------------------------------------------
    def _update(self, record: JobRecord, progress: dict[str, Any], journal: bool = True) -> None:
        with self._lock:
            record.progress = progress
            if journal:
                self.journal.write(record)

    def _storing(self, record: JobRecord) -> None:
        """The table's `on_ending`: a completed job's record shows its last stage, storing, at 100%."""
        if record.status == JobStatus.COMPLETED:
            record.progress = dict(record.progress, stage="storing", percent=100.0)

    def _observe_end(self, record: JobRecord) -> None:
        """Metrics and the one log line of a job's end (with the time spent in each stage)."""
        accepted = self._accepted_at.pop(record.job_id, None)
        duration = time.monotonic() - accepted if accepted is not None else None
        context = self._contexts.get(record.job_id)
        stages = context.timer.stop() if context is not None else {}
        code = (record.error or {}).get("code")
        self._metrics.job_finished(self.worker, record.type, record.status, duration, code, stages)
        with log_context(job_id=record.job_id, request_id=record.request_id, worker=self.worker):
            log.log(logging.WARNING if record.status == JobStatus.FAILED else logging.INFO, "job %s%s in %s",
                    record.status,
                    f" ({code})" if record.status == JobStatus.FAILED else "",
                    "unknown time (recovered)" if duration is None else f"{duration:.3f}s",
                    extra={"job_type": record.type, "status": record.status, "error_code": code,
                           "duration_s": None if duration is None else round(duration, 4),
                           "stages_s": {k: round(v, 4) for k, v in stages.items()}})

    # -- deadlines ---------------------------------------------------------------------------------
    def _deadline_s(self, record: JobRecord) -> float:
        return deadline_of(self.engine.settings, record.type)

    def _replace_stuck(self, job_id: str, deadline_s: float) -> None:
        """The job's engine did not stop within JOB_DEADLINE_GRACE_S of its deadline: nothing in this process
        can stop it. The job ends `failed` (timeout) in the journal, its callback gets a few seconds to go out
        (a pending one is sent again by the next process), and the process exits with STUCK_EXIT_STATUS:
        gunicorn's master starts a fresh one (a worker alone and under the orchestrator alike), which
        resumes the journal and the queue."""
        with self._lock:
            record = self.jobs.entry(job_id)
            if record is None or record.status in TERMINAL:
                return
            self._metrics.child(self._metrics.job_timeouts, self.worker).inc()
            grace = self.engine.settings.job_deadline_grace_s
            self.jobs.finish(record, JobStatus.FAILED, error={
                "code": errors.TIMEOUT,
                "message": f"the job ran past its deadline of {deadline_s:.0f}s and the engine did not stop within "
                           f"{grace:.0f}s; the worker process was replaced"})
        log.error("job %s: replacing the worker process (the engine is stuck)", job_id)
        self.callbacks.flush(STUCK_CALLBACK_FLUSH_S)
        self._exit_process(STUCK_EXIT_STATUS)

    def _fail_restarted(self, record: JobRecord) -> None:
        """The table's recovery policy for a job the previous process left unfinished: it ends failed."""
        log.warning("job %s was %s when the worker stopped; marking it failed", record.job_id, record.status)
        self.jobs.finish(record, JobStatus.FAILED, error={
            "code": errors.WORKER_RESTARTED,
            "message": f"the worker process stopped while the job was {record.status}; it was not completed"})
