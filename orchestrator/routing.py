"""Routing: `POST /jobs` on the orchestrator. Optional enhancement on the chat worker, then the SDXL or
WAN worker with the enhanced prompt, under one job id, with one terminal callback from here.

The generation worker is asked with `X-Callback-Mode: none` (the orchestrator sends the callback, with
both prompts in its metadata) and its job record is polled and mirrored into the orchestrator's record
(progress, assets, error). Threads are bounded, not one per job: one monitor thread polls the workers
for every routed job in flight (the workers have no route answering for several ids, so one GET per job
when its poll is due), and enhancements (a blocking call to the chat worker, then the submission) run on
at most CHAT_BATCH_SIZE threads (more would only wait in the chat worker's queue); both kinds of thread
exist only while there is work for them. Records are common/jobs.py's JobRecord and JobJournal and their
lifecycle common/job_table.py's JobTable (the workers' own), so a job routed before an orchestrator restart
is asked for on its worker, or ends `failed` with a reason, and its callback is sent.
Refusals are domain errors (common/errors.py: WorkerUnavailable, WorkerRefused, Unavailable); the
API turns them into HTTP.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import requests

from common import errors, policy
from common.callbacks import CallbackSender
from common.errors import ContentPolicyRefused, DomainError, Unavailable, WorkerUnavailable
from common.http import bearer_session, error_of, now_iso, refusal
from common.job_status import TERMINAL, JobStatus
from common.job_table import JobTable
from common.jobs import JobJournal, JobRecord, send_processing_callback
from common.logging import REQUEST_ID_HEADER, current_request_id, describe_text, log_context, new_request_id
from common.metrics import process_metrics
from configuration import requests as request_models
from configuration.requests.common import summarise_data_urls
from configuration.settings import Settings

log = logging.getLogger(__name__)

POLL_FIRST_S = 0.05    # the first seconds of a job: short jobs end within a few polls
POLL_FIRST_PHASE_S = 2.0
POLL_RUNNING_S = 0.1
POLL_QUEUED_S = 0.25
POLL_TIMEOUT_S = 5     # one poll; the monitor asks the other jobs' workers after it, so a hung worker is bounded
SUBMIT_TIMEOUT_S = 60


@dataclass
class RoutedJob:
    record: JobRecord
    target: str
    enhance: dict | None
    forward: dict
    submitted: bool = False
    accepted_at: float | None = None                      # monotonic; None for a job recovered from the journal
    recovered: bool = False                               # unfinished when an earlier orchestrator stopped
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage timed here (enhancing)
    next_poll: float = 0.0                                # monotonic: when the monitor next asks the worker
    first_phase_ends: float = 0.0                         # monotonic: polls are POLL_FIRST_S apart until then
    ask_until: float = 0.0                                # monotonic: a recovered job's worker is asked until then

    def log_context(self) -> AbstractContextManager[None]:
        return log_context(job_id=self.record.job_id, request_id=self.record.request_id, worker=self.target)


class Router:
    """`workers`: name -> supervisor (url, is_ready(), incarnation). `callbacks`: a CallbackSender."""

    def __init__(self, settings: Settings, workers: dict, callbacks: CallbackSender, journal: JobJournal):
        self.settings = settings
        self.workers = workers
        self.callbacks = callbacks
        self.journal = journal
        # The routed jobs, their done-events, ends, recovery and retention; its lock also guards the router's
        # own state (the followed jobs, the enhancement queue), so a finish never waits on a second lock.
        self.jobs: JobTable[RoutedJob] = JobTable("router", journal, callbacks, lambda job: job.record,
                                                  on_end=self._observe_end)
        self._lock = self.jobs.lock
        self._accepting = True
        self._session = bearer_session(settings.api_key)
        self._metrics = process_metrics()
        self._followed: dict[str, RoutedJob] = {}   # submitted jobs the monitor polls, until terminal
        self._monitor_thread: threading.Thread | None = None
        self._wake = threading.Event()              # a job to follow now: the monitor stops sleeping
        self._to_enhance: deque[RoutedJob] = deque()
        self._enhancers = 0                         # enhancement threads running, at most _enhancer_limit
        self._enhancer_limit = max(1, settings.chat_batch_size)
        self.jobs.recover(self._recovered_job, self._ask_recovered)

    # -- intake ------------------------------------------------------------------------------------------
    def dry_run(self, body: dict) -> dict:
        """Everything `submit` checks (here and, with its own dry run, on the target worker); nothing routed."""
        result = self.submit(body, dry_run=True)
        if not isinstance(result, dict):
            raise TypeError(f"a dry run answers a dict, not {type(result).__name__}")
        return result

    def submit(self, body: dict, dry_run: bool = False) -> tuple[JobRecord, bool] | dict:
        """(record, created) of a routed job; the same caller repeating an id gets the existing job, another
        user's id is JobIdConflict (409). With `dry_run`, the checks' answer and nothing routed."""
        # The routing envelope (configuration/requests/orchestrator.py): 400s, then where the job goes
        plan = request_models.check("orchestrator.jobs", body, self.settings).to_params()
        target, enhance, forward = plan["target"], plan["enhance"], plan["forward"]
        # The content policy before anything runs (422 content_policy); the enhanced prompt is checked again.
        tier, prompt_check = policy.check_generation_prompt(body, self.settings.content_tier_default, body.get("id"))
        if enhance and "content_tier" in body:
            enhance["content_tier"] = tier
        job_id = body.get("id") or uuid.uuid4().hex
        forward["id"] = job_id
        user_id = body.get("user_id", "anonymous")
        if dry_run:
            self.jobs.claim(job_id, user_id)
            self._require_ready(target)
            if enhance:
                self._require_ready("chat")
            checked = self._post_generate(target, forward, dry_run=True)
            return {"valid": True, "target": target, "enhance": enhance, "parameters": checked.get("parameters")}
        with self._lock:
            existing = self.jobs.claim(job_id, user_id)
            if existing is not None:
                return existing.record, False
            if not self._accepting:
                raise Unavailable("the orchestrator is shutting down", retry_after_s=30)
            self._require_ready(target)
            if enhance:
                self._require_ready("chat")
            record = JobRecord(job_id=job_id, type=body["type"], user_id=body.get("user_id", "anonymous"),
                               # the journal keeps a summary: a data: URL reference image can be megabytes
                               params={"target": target, "enhance": enhance, "forward": summarise_data_urls(forward)},
                               metadata={"original_prompt": body["prompt"], "enhanced_prompt": None,
                                         "target": target, "enhancement": None, "stages": [],
                                         "content_policy": policy.job_entry(tier, prompt_check)})
            record.progress["stage"] = "queued"
            record.request_id = current_request_id() or new_request_id()
            job = RoutedJob(record, target, enhance, forward, accepted_at=time.monotonic())
            self.jobs.add(job)  # reserved: a concurrent repeat of this id gets this job
        try:
            if enhance:
                # Everything the worker would refuse (validation, model checks, memory too big) is refused
                # now, before the chat model spends time on the prompt.
                self._post_generate(target, forward, dry_run=True)
            else:
                self._post_generate(target, forward)
                self._mark_submitted(job)
        except DomainError:
            self.jobs.remove(job_id)
            raise
        with self._lock:
            self.journal.write(record)
        self._metrics.job_submitted(target, record.type)
        with job.log_context():
            log.info("job accepted: %s to %s%s, prompt %s", record.type, target,
                     " after enhancement" if enhance else "", describe_text(body["prompt"]),
                     extra={"job_type": record.type})
        if enhance:
            self._queue_enhancement(job)
        else:
            self._follow(job)
        return record, True

    def _require_ready(self, worker: str) -> None:
        supervisor = self.workers.get(worker)
        if supervisor is None:
            raise WorkerUnavailable(f"the {worker} worker is not enabled on this pod (ENABLED_WORKERS)",
                                    retry_after_s=60)
        if not supervisor.is_ready():
            raise WorkerUnavailable(f"the {worker} worker is {supervisor.state}", retry_after_s=errors.RETRY_AFTER_S)

    def _post_generate(self, target: str, forward: dict, dry_run: bool = False) -> dict:
        """POST the body to the target's /generate; a refusal is raised as the worker's own error."""
        url = self.workers[target].url + "/generate" + ("?dry_run=1" if dry_run else "")
        try:
            response = self._session.post(url, json=forward, headers={"X-Callback-Mode": "none", **_request_id()},
                                          timeout=SUBMIT_TIMEOUT_S)
        except requests.RequestException as exc:
            raise WorkerUnavailable(f"the {target} worker cannot be reached ({type(exc).__name__})",
                                    retry_after_s=errors.RETRY_AFTER_S) from None
        if response.status_code in (200, 202):
            return response.json()
        raise refusal(response, f"the {target} worker")

    def get(self, job_id: str) -> JobRecord | None:
        return self.jobs.get(job_id)

    def wait(self, job_id: str, timeout_s: float) -> bool:
        return self.jobs.wait(job_id, timeout_s)

    def cancel(self, job_id: str) -> JobRecord:
        """KeyError: unknown. ValueError: already finished."""
        with self._lock:
            job = self.jobs[job_id]
            if job.record.status in TERMINAL:
                raise ValueError(f"job {job_id} already {job.record.status}")
            self._metrics.job_cancelled(job.target, job.record.progress.get("stage") or "queued")
            if not job.submitted:
                self.jobs.finish(job, JobStatus.CANCELLED,
                                 {"code": errors.CANCELLED, "message": "cancelled before generation started"})
                return job.record
        try:
            response = self._session.post(f"{self.workers[job.target].url}/jobs/{job_id}/cancel", timeout=10)
        except requests.RequestException as exc:
            raise WorkerUnavailable(f"the {job.target} worker cannot be reached ({type(exc).__name__})",
                                    retry_after_s=errors.RETRY_AFTER_S) from None
        if response.status_code not in (200, 409):
            message = error_of(response).get("message", f"cancel answered HTTP {response.status_code}")
            raise DomainError(message, errors.WORKER_ERROR, retry_after_s=errors.RETRY_AFTER_S)
        job.next_poll = 0.0  # the monitor asks the worker at its next turn, not at the job's polling pace
        self._wake.set()
        self.jobs.wait(job_id, 2.0)  # the mirror usually sees the worker's terminal state within a poll or two
        return job.record

    # -- the route of one job ----------------------------------------------------------------------------------
    def _enhance_then_generate(self, job: RoutedJob) -> None:
        with self._lock:
            if job.record.status in TERMINAL:
                return
            job.record.status = JobStatus.PROCESSING
            job.record.started_at = now_iso()
            self._stage(job, {"stage": "enhancing", "step": 0, "total_steps": 0, "percent": 0.0})
            send_processing_callback(job.record, self.callbacks)
        try:
            enhanced, info = self._enhance(job)
            # The enhanced prompt is what the generation worker would read: checked before it gets there.
            checked = policy.check_text([enhanced, job.forward.get("compel_weights")], stage="enhanced_prompt",
                                        tier=job.record.metadata["content_policy"]["tier"], job_id=job.record.job_id)
            job.record.metadata["content_policy"]["checks"].append(checked.public())
            policy.require(checked)
        except DomainError as exc:
            with self._lock:
                if job.record.status not in TERMINAL:
                    if isinstance(exc, ContentPolicyRefused):
                        job.record.metadata["original_prompt"] = None  # neither prompt goes back to the caller
                    self.jobs.finish(job, JobStatus.FAILED, {"code": exc.code, "message": exc.message})
            return
        with self._lock:
            if job.record.status in TERMINAL:  # cancelled while enhancing
                return
            job.record.metadata["enhanced_prompt"] = enhanced
            job.record.metadata["enhancement"] = info
            job.forward["prompt"] = enhanced
            self.journal.write(job.record)
        try:
            self._post_generate(job.target, job.forward)
        except DomainError as exc:
            with self._lock:
                if job.record.status not in TERMINAL:
                    self.jobs.finish(job, JobStatus.FAILED, {
                        "code": exc.code,
                        "message": f"the {job.target} worker refused the enhanced job: {exc.message}"})
            return
        self._mark_submitted(job)
        self._follow(job)

    def _mark_submitted(self, job: RoutedJob) -> None:
        """The worker has the job. One cancelled here while the submission was in flight is cancelled there too."""
        with self._lock:
            job.submitted = True
            cancelled_meanwhile = job.record.status in TERMINAL
        if cancelled_meanwhile:
            try:
                self._session.post(f"{self.workers[job.target].url}/jobs/{job.record.job_id}/cancel", timeout=10)
            except requests.RequestException as exc:
                log.error("job %s was cancelled but the %s worker could not be told (%s)", job.record.job_id,
                          job.target, type(exc).__name__)

    def _enhance(self, job: RoutedJob) -> tuple[str, dict]:
        if job.enhance is None:
            raise ValueError("only a job that asked for enhancement is enhanced")
        spec = dict(job.enhance)
        model = spec.pop("model")
        body = {"prompt": job.record.metadata["original_prompt"], "target_model": job.target, **spec}
        url = f"{self.workers['chat'].url}/enhance/{model}"
        started = time.monotonic()
        try:
            response = self._session.post(url, json=body, timeout=self.settings.enhance_timeout_s,
                                          headers=_request_id())
        except requests.RequestException as exc:
            raise DomainError(f"the chat worker could not be reached or did not answer in time ({type(exc).__name__})",
                              errors.ENHANCEMENT_FAILED) from None
        if response.status_code != 200:
            error = error_of(response)
            if error.get("code") == errors.CONTENT_POLICY:  # the chat worker's own input or output check
                found = next((d for d in error.get("details") or [] if isinstance(d, dict) and "category" in d), {})
                raise ContentPolicyRefused(str(found.get("category", policy.EXPLICIT)),
                                           str(found.get("stage", "enhance")),
                                           job.record.metadata["content_policy"]["tier"], found.get("rule"))
            details = "; ".join(f"{d.get('path') or '/'}: {d.get('message')}" for d in error.get("details") or []
                                if isinstance(d, dict) and d.get("message"))
            reason = f"{error.get('code', '')}): {error.get('message', '')}" + (f" ({details})" if details else "")
            raise DomainError(f"the chat worker refused the enhancement (HTTP {response.status_code} {reason}",
                              errors.ENHANCEMENT_FAILED)
        try:
            result = response.json()
            enhanced = result["enhanced_prompt"]
        except (ValueError, KeyError, TypeError):
            raise DomainError("the chat worker answered without an enhanced_prompt",
                              errors.ENHANCEMENT_FAILED) from None
        if not isinstance(enhanced, str) or not enhanced.strip():
            raise DomainError("the chat worker returned an empty enhanced prompt", errors.ENHANCEMENT_FAILED)
        seconds = time.monotonic() - started
        job.timings["enhancing"] = seconds
        info = {"model": result.get("model", model), "tokens_generated": result.get("tokens_generated"),
                "generation_time": result.get("generation_time"), "parameters": result.get("parameters"),
                "seconds": round(seconds, 3)}
        return enhanced, info

    # -- the threads: enhancements on a bounded pool, one monitor for every submitted job ---------------------
    def _queue_enhancement(self, job: RoutedJob) -> None:
        """Enhance, then submit, on one of at most `_enhancer_limit` threads; a job waits `queued` for one."""
        with self._lock:
            self._to_enhance.append(job)
            if self._enhancers >= self._enhancer_limit:
                return
            self._enhancers += 1
        threading.Thread(target=self._enhancer, name="route-enhance", daemon=True).start()

    def _enhancer(self) -> None:
        """An enhancement thread: takes waiting jobs until there are none, then ends. No error of one job
        (not even in failing it: a full disk under the journal) ends the thread while jobs wait."""
        while True:
            with self._lock:
                if not self._to_enhance:
                    self._enhancers -= 1
                    return
                job = self._to_enhance.popleft()
            with job.log_context():  # every line it logs carries the job's id, worker and request id
                try:
                    self._enhance_then_generate(job)
                except Exception as exc:  # the thread serves the other jobs; this one ends failed
                    log.exception("routing job %s failed unexpectedly", job.record.job_id)
                    self._fail_unexpectedly(job, exc)

    def _fail_unexpectedly(self, job: RoutedJob, exc: Exception) -> None:
        try:
            with self._lock:
                if job.record.status not in TERMINAL:
                    self.jobs.finish(job, JobStatus.FAILED, {
                        "code": errors.INTERNAL_ERROR,
                        "message": f"the orchestrator failed routing the job ({type(exc).__name__})"})
        except Exception:
            log.exception("failing job %s after an unexpected error failed too", job.record.job_id)

    def _follow(self, job: RoutedJob) -> None:
        """Hand a submitted (or recovered) job to the monitor, starting the monitor thread if none runs."""
        now = time.monotonic()
        job.next_poll = now
        job.first_phase_ends = now + POLL_FIRST_PHASE_S
        # A restarted pod's worker may first wait for its previous process to drain (one process per journal).
        job.ask_until = now + self.settings.worker_ready_timeout_s + self.settings.shutdown_grace_s + 60
        with self._lock:
            self._followed[job.record.job_id] = job
            if self._monitor_thread is None:
                self._monitor_thread = threading.Thread(target=self._monitor, name="route-monitor", daemon=True)
                self._monitor_thread.start()
        self._wake.set()

    def _monitor(self) -> None:
        """The one monitor thread: polls each followed job's worker when the job's poll is due, oldest due
        first, until every followed job is terminal; then it ends (`_follow` starts another). A worker that
        does not answer is not asked again in the same round, so it delays the other workers' jobs by at
        most one POLL_TIMEOUT_S per round."""
        while True:
            self._wake.clear()
            with self._lock:
                for job_id in [j for j, job in self._followed.items() if job.record.status in TERMINAL]:
                    del self._followed[job_id]
                if not self._followed:
                    self._monitor_thread = None
                    return
                now = time.monotonic()
                due = sorted((job for job in self._followed.values() if job.next_poll <= now),
                             key=lambda job: job.next_poll)
                next_due = min(job.next_poll for job in self._followed.values())
            if not due:
                self._wake.wait(next_due - now)
                continue
            silent: set[str] = set()  # workers that did not answer this round
            for job in due:
                with job.log_context():
                    try:
                        if job.target in silent:
                            self._not_answered(job)
                        elif not self._poll(job):
                            silent.add(job.target)
                    except Exception:  # the monitor serves every job: log, ask again later
                        log.exception("following job %s on the %s worker failed; asking again", job.record.job_id,
                                      job.target)
                        job.next_poll = time.monotonic() + POLL_QUEUED_S

    def _poll(self, job: RoutedJob) -> bool:
        """Ask the worker for the job once and mirror its record; False when the worker did not answer.
        A job recovered from the journal is asked the same way: the worker says what became of it (it may
        have finished while no orchestrator was there); only a worker that never had it, or cannot be
        asked in time, fails it."""
        url = f"{self.workers[job.target].url}/jobs/{job.record.job_id}"
        try:
            response = self._session.get(url, timeout=POLL_TIMEOUT_S)
        except requests.RequestException:
            self._not_answered(job)  # a dead worker is reported by its supervisor (worker_died)
            return False
        if response.status_code not in (200, 404):
            self._not_answered(job)
            return True
        if response.status_code == 404:
            with self._lock:
                if job.record.status not in TERMINAL:
                    if job.recovered:
                        self._fail_recovered(job, f"the {job.target} worker never received it")
                    else:
                        self.jobs.finish(job, JobStatus.FAILED, {"code": errors.WORKER_LOST_JOB,
                                                         "message": f"the {job.target} worker no longer knows the job"})
            return True
        remote = response.json()
        with self._lock:
            if job.record.status in TERMINAL:
                return True
            self._mirror(job, remote)
            if remote["status"] in TERMINAL:
                return True
        now = time.monotonic()
        if now < job.first_phase_ends:
            job.next_poll = now + POLL_FIRST_S
        else:
            job.next_poll = now + (POLL_RUNNING_S if remote["status"] == JobStatus.PROCESSING else POLL_QUEUED_S)
        return True

    def _not_answered(self, job: RoutedJob) -> None:
        """The worker gave no record this time: ask again later, or fail a recovered job asked long enough."""
        if job.recovered and time.monotonic() > job.ask_until:
            self._fail_recovered(job, f"the {job.target} worker could not be asked what became of it")
        else:
            job.next_poll = time.monotonic() + POLL_QUEUED_S

    def _mirror(self, job: RoutedJob, remote: dict) -> None:
        record = job.record
        if remote["status"] == JobStatus.PROCESSING and record.status == JobStatus.QUEUED:
            record.status = JobStatus.PROCESSING
            record.started_at = remote.get("started_at") or now_iso()
            send_processing_callback(record, self.callbacks)
        if record.status == JobStatus.PROCESSING and remote.get("progress", {}).get("stage") not in (None, "queued"):
            self._stage(job, dict(remote["progress"]), journal=False)
        if remote["status"] in TERMINAL:
            record.assets = remote.get("assets", [])
            parameters = (remote.get("metadata") or {}).get("parameters")
            if parameters is not None:
                record.metadata["parameters"] = parameters
            caller = (remote.get("metadata") or {}).get("caller_metadata")
            if caller is not None:
                record.metadata["caller_metadata"] = caller
            checked = ((remote.get("metadata") or {}).get("content_policy") or {}).get("checks") or []
            if "content_policy" in record.metadata:  # the worker's own checks, after the orchestrator's
                record.metadata["content_policy"]["checks"] += [dict(c, worker=job.target) for c in checked]
            if remote["status"] == JobStatus.COMPLETED:
                self._stage(job, dict(remote.get("progress") or {}, stage="storing"), journal=False)
            self.jobs.finish(job, JobStatus(remote["status"]), remote.get("error"))

    def _stage(self, job: RoutedJob, progress: dict, journal: bool = True) -> None:
        job.record.progress = progress
        stages = job.record.metadata["stages"]
        if not stages or stages[-1] != progress["stage"]:
            stages.append(progress["stage"])
            journal = True
        if journal:
            self.journal.write(job.record)

    # -- worker lifecycle ----------------------------------------------------------------------------------
    def worker_exited(self, worker: str, reason: str, unexpected: bool) -> None:
        """The supervisor saw the worker's process end: jobs it had accepted will not finish there."""
        with self._lock:
            for job in self.jobs.entries():
                if job.target == worker and job.submitted and job.record.status not in TERMINAL:
                    state = job.record.status
                    code = errors.WORKER_DIED if unexpected else errors.WORKER_STOPPED
                    self.jobs.finish(job, JobStatus.FAILED, {
                        "code": code, "message": f"{reason} while the job was {state}; it was not completed"})

    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False

    def unfinished(self) -> list[str]:
        return self.jobs.unfinished()

    def fail_unfinished(self, reason: str) -> list[str]:
        """At the end of the shutdown grace: ask the workers to stop what is left and fail it here."""
        failed = []
        for job_id in self.unfinished():
            job = self.jobs[job_id]
            if job.submitted:
                try:
                    self._session.post(f"{self.workers[job.target].url}/jobs/{job_id}/cancel", timeout=5)
                except requests.RequestException:
                    pass
            with self._lock:
                if job.record.status not in TERMINAL:
                    self.jobs.finish(job, JobStatus.FAILED, {"code": errors.ORCHESTRATOR_STOPPED, "message": reason})
                    failed.append(job_id)
        return failed

    # -- bookkeeping -------------------------------------------------------------------------------------------
    def _observe_end(self, job: RoutedJob) -> None:
        """The table's `on_end`: metrics and the one log line of a routed job's end."""
        record = job.record
        duration = time.monotonic() - job.accepted_at if job.accepted_at is not None else None
        code = (record.error or {}).get("code") if record.status != JobStatus.COMPLETED else None
        self._metrics.job_finished(job.target, record.type, record.status, duration, code, job.timings)
        with job.log_context():
            log.info("job %s %s%s", record.job_id, record.status, f" ({code})" if code else "",
                     extra={"job_type": record.type, "status": record.status, "error_code": code,
                            "duration_s": None if duration is None else round(duration, 4)})

    # -- the ops page -----------------------------------------------------------------------------------------
    def summaries(self, limit: int) -> list[dict]:
        """Unfinished routed jobs and the `limit` most recently finished, without prompts."""
        return self.jobs.summaries(limit, lambda job: job.target)

    def counts(self) -> dict[tuple[str, str], int]:
        """(worker, status) -> routed jobs not finished yet."""
        return self.jobs.counts(lambda job: job.target)

    def _fail_recovered(self, job: RoutedJob, why: str) -> None:
        with self._lock:
            if job.record.status not in TERMINAL:
                self.jobs.finish(job, JobStatus.FAILED, {"code": errors.ORCHESTRATOR_RESTARTED, "message": (
                    f"the orchestrator stopped while the job was {job.record.status} and {why}; "
                    "it was not completed")})

    def _recovered_job(self, record: JobRecord) -> RoutedJob:
        """A journaled record as the routed job it was (the journal keeps its route in `params`)."""
        params = record.params or {}
        return RoutedJob(record, params.get("target", ""), params.get("enhance"), params.get("forward", {}),
                         submitted=True, recovered=record.status not in TERMINAL)

    def _ask_recovered(self, job: RoutedJob) -> None:
        """The table's recovery policy for a job an earlier orchestrator process left unfinished: its worker is
        asked what became of it (`_follow`); one whose worker is not enabled now ends failed."""
        if job.target not in self.workers:
            self._fail_recovered(job, f"its worker ({job.target or 'unknown'}) is not enabled now")
            return
        log.warning("routed job %s was %s when the orchestrator stopped; asking the %s worker what became of it",
                    job.record.job_id, job.record.status, job.target)
        self._follow(job)


def _request_id() -> dict[str, str]:
    """The request id header for a call to a worker: the job's (the enhancement thread's log context) or the
    request's."""
    rid = current_request_id()
    return {REQUEST_ID_HEADER: rid} if rid else {}
