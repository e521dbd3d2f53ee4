"""Prometheus metrics of one process (a worker or the orchestrator), served at `GET /metrics`.

Every process has its own registry (`process_metrics()`): gunicorn runs one worker process per
worker (workers/gunicorn_conf.py), the orchestrator is one waitress process, so nothing needs the
multiprocess mode. Names follow the Prometheus conventions: `ourvidz_` prefix, base units in the name
(`_seconds`, `_bytes`), `_total` on counters. No label ever takes a prompt, a user id or a job id:
label values are worker, model, job type, stage, status, error code, queue and reason names, all
bounded by the configuration. docs/CONFIGURATION.md lists every metric (generated from `Metrics` by
`python -m common.reference`).

Gauges that mirror state held elsewhere (device memory, leases, worker states, queue depths) are
refreshed at scrape time by the hooks passed to `on_scrape`, so nothing on a job's path pays for them.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase

from common import errors
from common.job_status import JobStatus
from configuration import job_types
from configuration.openapi import RouteTable

if TYPE_CHECKING:
    from flask import Blueprint

log = logging.getLogger(__name__)

PREFIX = "ourvidz"
# `_created` timestamps double the series for nothing a dashboard here reads.
disable_created_metrics()
# Job stages: seconds-long GPU work (generation of an image, minutes for a video), sub-second
# bookkeeping (queue wait on an idle worker, encoding a thumbnail).
STAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                 1200.0, 1800.0)
JOB_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKENS_PER_SECOND_BUCKETS = (1, 5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

# The job stages timed by `ourvidz_job_stage_duration_seconds` (queue_wait is submission -> start).
STAGES = ("queue_wait", "enhancing", "loading", "generating", "encoding", "storing")
WORKER_STATES = ("starting", "ready", "restarting", "failed", "stopping", "stopped")

# ---- label values: closed sets -------------------------------------------------------------------------
# A job's type, error code and stage reach these labels from what a caller sent (a queued entry's `type`
# is recorded on the job it is refused as): every value outside its closed set counts as "other", so junk
# adds one series, never one per value (1,950 junk types once took /metrics from 36 KB to 1 MB, issue 19).
OTHER = "other"
# The stage a job was cancelled in (its progress stage, else its status) besides the timed ones.
JOB_STAGES = (*STAGES, "queued", "fetching", "running")


def error_codes() -> frozenset[str]:
    """Every error code common/errors.py declares (`errors.CODES`), and "unknown"."""
    return frozenset(errors.CODES) | {"unknown"}


class ClosedLabels:
    """The closed sets of the job labels: `type` (configured job types, "unknown" for a refused entry
    without one), `code` (error codes) and `stage` (job stages). Read once per process."""

    def __init__(self) -> None:
        self.types = frozenset(job_types()) | {"unknown"}
        self.codes = error_codes()
        self.stages = frozenset(JOB_STAGES)

    def job_type(self, value: str) -> str:
        return value if value in self.types else OTHER

    def code(self, value: str) -> str:
        return value if value in self.codes else OTHER

    def stage(self, value: str) -> str:
        return value if value in self.stages else OTHER


# What `on_scrape` runs before an exposition (its result is not used).
ScrapeHook = Callable[["Metrics"], object]
_Metric = TypeVar("_Metric", bound=MetricWrapperBase)


class Metrics:
    """The metrics of one process. `process`: "sdxl", "wan", "chat" or "orchestrator"."""

    def __init__(self, process: str, profile: str = "") -> None:
        self.process = process
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)      # process_start_time_seconds, CPU, resident memory, open fds
        PlatformCollector(registry=r)     # python_info
        self._hooks: list[tuple[str | None, ScrapeHook]] = []
        self._hooks_lock = threading.Lock()
        # (metric, label values) -> its child: labels() validates on every call
        self._children: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}
        self.closed = ClosedLabels()

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, labels, registry=r)

        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, labels, registry=r)

        def histogram(name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", doc, labels, buckets=buckets, registry=r)

        # -- build -------------------------------------------------------------------------------
        self.build_info = Info(f"{PREFIX}_build", "Version, model profile and library versions of this process.",
                               registry=r)
        self.build_info.info(build_labels(process, profile))

        # -- jobs (`worker`: the worker that ran it, or "orchestrator" for routed jobs) -----------
        self.jobs_submitted = counter("jobs_submitted_total", "Jobs accepted (HTTP or queue).", ("worker", "type"))
        self.jobs_started = counter("jobs_started_total", "Jobs that began running.", ("worker", "type"))
        self.jobs_finished = counter("jobs_finished_total", "Jobs that reached a terminal status.",
                                     ("worker", "type", "status"))
        self.job_failures = counter("job_failures_total", "Failed jobs by error code.", ("worker", "type", "code"))
        self.job_cancellations = counter("job_cancellations_total",
                                         "Cancellation requests that stopped a job, by the stage it was in.",
                                         ("worker", "stage"))
        self.job_timeouts = counter("job_timeouts_total", "Jobs failed `timeout`: past their execution deadline "
                                    "(JOB_DEADLINE_*_S) and stopped at a step, or ended when the engine did not stop "
                                    "within JOB_DEADLINE_GRACE_S (the process is then replaced).", ("worker",))
        self.app_cancels = counter("app_cancels_total", "Jobs the app marked cancelled in its `jobs` table, by the "
                                   "stage the worker saw it in: before_start or running.", ("worker", "stage"))
        self.app_status_read_failures = counter("app_status_read_failures_total", "Reads of a job's status in the "
                                                "app's `jobs` table that failed (the job goes on).", ("worker",))
        self.job_duration = histogram("job_duration_seconds", "Submission to terminal status.",
                                      ("worker", "type", "status"), JOB_BUCKETS)
        self.stage_duration = histogram("job_stage_duration_seconds",
                                        "Time a job spent in each stage (queue_wait, enhancing, loading, "
                                        "generating, encoding, storing).", ("worker", "type", "stage"),
                                        STAGE_BUCKETS)
        self.jobs_queued = gauge("jobs_queued", "Jobs accepted and waiting for the executor.", ("worker",))
        self.jobs_running = gauge("jobs_running", "Jobs running now.", ("worker",))

        # -- queue intake (Redis lists, as the consumer sees them) --------------------------------
        self.queue_depth = gauge("queue_depth", "Entries waiting in a Redis job queue (LLEN).", ("queue",))
        self.queue_in_flight = gauge("queue_in_flight", "Entries taken from a queue and not yet acknowledged.",
                                     ("queue",))
        self.queue_taken = counter("queue_entries_taken_total", "Entries taken from a queue.", ("queue",))
        self.queue_redeliveries = counter("queue_redeliveries_total",
                                          "Entries taken again after a consumer died holding them.", ("queue",))
        self.queue_dead_letters = counter("queue_dead_letters_total",
                                          "Entries moved to the dead-letter list (unreadable or redelivered too "
                                          "often).",
                                          ("queue",))
        self.queue_redis_up = gauge("queue_redis_up", "1 while the queue consumer reaches Redis; 0 while Redis is "
                                    "unreachable or refuses the password (the consumer's /ready says which).",
                                    ("queue",))

        # -- memory ---------------------------------------------------------------------------------
        self.device_total = gauge("device_memory_total_bytes", "Device memory capacity.", ("device",))
        self.device_used = gauge("device_memory_used_bytes", "Device memory in use (all processes).", ("device",))
        self.device_free = gauge("device_memory_free_bytes", "Device memory free.", ("device",))
        self.memory_budget = gauge("memory_budget_bytes", "Memory the broker may lease (capacity - reserve).",
                                   ("device",))
        self.memory_leased = gauge("memory_leased_bytes", "Bytes leased to a worker's model (0 when unloaded).",
                                   ("worker", "model"))
        self.memory_working = gauge("memory_working_bytes", "Working (activation) memory leased to a worker's jobs.",
                                    ("worker",))
        self.memory_evictions = counter("memory_evictions_total", "Models unloaded to make room for another.",
                                        ("worker", "model"))
        self.memory_lease_waits = counter("memory_lease_waits_total", "Lease requests that had to wait.",
                                          ("worker", "model"))
        self.memory_lease_wait = histogram("memory_lease_wait_seconds",
                                           "Time a lease request waited before it was granted or refused.",
                                           ("worker",), WAIT_BUCKETS)
        self.memory_refusals = counter("memory_refusals_total",
                                       "Memory requests answered 409, by reason (too_big; timeout under the broker; "
                                       "occupied for a worker alone).", ("reason",))
        self.model_loads = counter("model_loads_total", "Models loaded.", ("worker", "model"))
        self.model_load_duration = histogram("model_load_duration_seconds", "Time to load a model.",
                                             ("worker", "model"), STAGE_BUCKETS)
        self.model_resident = gauge("model_resident_bytes", "Bytes a loaded model occupies (this worker).",
                                    ("model",))

        # -- chat -------------------------------------------------------------------------------------
        self.chat_requests = counter("chat_requests_total", "Chat generations by kind (chat, enhance) and "
                                     "outcome (stop, length, cancelled, error).", ("model", "kind", "status"))
        self.chat_prompt_tokens = counter("chat_prompt_tokens_total", "Prompt (input) tokens.", ("model",))
        self.chat_completion_tokens = counter("chat_completion_tokens_total", "Generated (output) tokens.",
                                              ("model",))
        self.chat_tokens_per_second = histogram("chat_generation_tokens_per_second",
                                                "Output tokens per second of one request.", ("model",),
                                                TOKENS_PER_SECOND_BUCKETS)
        self.chat_batch_size = histogram("chat_batch_size", "Requests generated together in one batch.",
                                         ("model",), BATCH_BUCKETS)
        self.chat_ttft = histogram("chat_time_to_first_token_seconds",
                                   "Submission to the first generated token.", ("model",), TTFT_BUCKETS)

        # -- content policy (common/policy.py, docs/POLICY.md) -----------------------------------------
        self.policy_decisions = counter("policy_decisions_total", "Content policy decisions by outcome (allowed, "
                                        "refused, not_run), category, stage and tier; never the text.",
                                        ("outcome", "category", "stage", "tier"))

        # -- callbacks --------------------------------------------------------------------------------
        self.callback_attempts = counter("callback_attempts_total", "Callback POSTs made, by outcome "
                                         "(delivered, refused, retryable, rejected).", ("outcome",))
        self.callbacks_refused = counter("callbacks_refused_total", "Callback attempts the receiver answered "
                                         "401/403 (retried): callbacks refused by the receiver, check "
                                         "JOB_CALLBACK_SECRET.")
        self.callbacks_refused_by_receiver = gauge("callbacks_refused_by_receiver", "1 while the receiver's latest "
                                                   "answer was a 401/403: callbacks refused by the receiver, check "
                                                   "JOB_CALLBACK_SECRET; 0 once one is accepted.")
        self.callbacks_delivered = counter("callbacks_delivered_total", "Callbacks the receiver accepted.")
        self.callback_retries = counter("callback_retries_total", "Callback attempts scheduled again after a failure.")
        self.callbacks_abandoned = counter("callbacks_abandoned_total",
                                           "Callbacks given up after their last attempt or a final rejection.")
        self.callbacks_pending = gauge("callbacks_pending", "Callbacks queued or being attempted.")
        self.callback_oldest_age = gauge("callback_oldest_pending_age_seconds",
                                         "Age of the oldest undelivered callback (0 when none).")

        # -- supervision (orchestrator) ---------------------------------------------------------------
        self.worker_restarts = counter("worker_restarts_total", "Worker processes restarted after dying.",
                                       ("worker",))
        self.worker_state = Enum(f"{PREFIX}_worker_state", "Supervisor state of each worker.", ("worker",),
                                 states=list(WORKER_STATES), registry=r)
        self.worker_ready = gauge("worker_ready", "1 when the worker answers /ready.", ("worker",))

    # -- scrape ----------------------------------------------------------------------------------------
    def on_scrape(self, hook: ScrapeHook, key: str | None = None) -> None:
        """`hook(metrics)` runs before every exposition, to refresh gauges mirroring state held elsewhere.
        A hook with the `key` of an earlier one replaces it (an app built again in the same process)."""
        with self._hooks_lock:
            self._hooks = [(k, h) for k, h in self._hooks if key is None or k != key]
            self._hooks.append((key, hook))

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of the text exposition format; a failing hook is logged, never fatal."""
        with self._hooks_lock:
            hooks = [h for _k, h in self._hooks]
        for hook in hooks:
            try:
                hook(self)
            except Exception:  # a scrape shows what it can; the error is in the log
                log.exception("metrics hook %s failed", getattr(hook, "__qualname__", hook))
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # -- recording helpers used on a job's path --------------------------------------------------------
    def child(self, metric: _Metric, *labels: str) -> _Metric:
        """`metric.labels(*labels)`, looked up once per label set (a dict lookup afterwards)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return cast(_Metric, found)  # stored under the metric's own id: its labels() child, of its type

    def job_submitted(self, worker: str, job_type: str) -> None:
        self.child(self.jobs_submitted, worker, self.closed.job_type(job_type)).inc()

    def job_started(self, worker: str, job_type: str) -> None:
        self.child(self.jobs_started, worker, self.closed.job_type(job_type)).inc()

    def job_cancelled(self, worker: str, stage: str) -> None:
        self.child(self.job_cancellations, worker, self.closed.stage(stage)).inc()

    def job_finished(self, worker: str, job_type: str, status: str, duration_s: float | None,
                     error_code: str | None = None, stages: dict | None = None) -> None:
        job_type = self.closed.job_type(job_type)
        self.child(self.jobs_finished, worker, job_type, status).inc()
        if status == JobStatus.FAILED:
            self.child(self.job_failures, worker, job_type, self.closed.code(error_code or "unknown")).inc()
        if duration_s is not None:
            self.child(self.job_duration, worker, job_type, status).observe(duration_s)
        for stage, seconds in (stages or {}).items():
            self.child(self.stage_duration, worker, job_type, self.closed.stage(stage)).observe(seconds)


class StageTimer:
    """Time spent per stage of one job: `enter(stage)` closes the stage before it. A stage entered twice
    (an img2img reference fetched while `loading`) accumulates. `timings()` includes the open stage."""

    __slots__ = ("_clock", "_current", "_since", "_totals")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._current: str | None = None
        self._since = 0.0
        self._totals: dict[str, float] = {}

    def enter(self, stage: str | None) -> None:
        now = self._clock()
        self._close(now)
        self._current, self._since = stage, now

    def add(self, stage: str, seconds: float) -> None:
        """Record a stage measured elsewhere (queue wait: submission to start)."""
        self._totals[stage] = self._totals.get(stage, 0.0) + max(0.0, seconds)

    def stop(self) -> dict[str, float]:
        self._close(self._clock())
        self._current = None
        return dict(self._totals)

    def timings(self) -> dict[str, float]:
        totals = dict(self._totals)
        if self._current is not None:
            totals[self._current] = totals.get(self._current, 0.0) + self._clock() - self._since
        return {k: round(v, 4) for k, v in totals.items()}

    def _close(self, now: float) -> None:
        if self._current is not None:
            self._totals[self._current] = self._totals.get(self._current, 0.0) + now - self._since


# ---- the process's registry -----------------------------------------------------------------------------

_PROCESS: Metrics | None = None
_PROCESS_LOCK = threading.Lock()


def configure_metrics(process: str, profile: str = "") -> Metrics:
    """Create this process's metrics (idempotent for the same process name)."""
    global _PROCESS
    with _PROCESS_LOCK:
        if _PROCESS is None or _PROCESS.process != process:
            _PROCESS = Metrics(process, profile)
        return _PROCESS


def process_metrics() -> Metrics:
    """This process's metrics; a process that never configured them gets an "unconfigured" set (tests
    that build parts without an app), so recording never needs a None check."""
    global _PROCESS
    with _PROCESS_LOCK:
        if _PROCESS is None:
            _PROCESS = Metrics("unconfigured")
        return _PROCESS


# ---- build info -----------------------------------------------------------------------------------------

_REPO = Path(__file__).resolve().parent.parent


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def source_revision(repo: Path = _REPO) -> str:
    """The git commit the code was started from (read from .git, no subprocess); "unknown" without .git."""
    head = repo / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if not ref.startswith("ref: "):
            return ref[:12]
        name = ref[5:]
        loose = repo / ".git" / name
        if loose.exists():
            return loose.read_text().strip()[:12]
        for line in (repo / ".git" / "packed-refs").read_text().splitlines():
            if line.endswith(" " + name):
                return line.split()[0][:12]
    except OSError:
        pass
    return "unknown"


def build_labels(process: str, profile: str) -> dict[str, str]:
    """What `ourvidz_build_info` carries; library versions from package metadata (torch is not imported)."""
    return {"process": process, "revision": source_revision(), "model_profile": profile or "unknown",
            "torch": _version("torch"), "diffusers": _version("diffusers"),
            "transformers": _version("transformers"), "prometheus_client": _version("prometheus_client")}


# ---- HTTP -----------------------------------------------------------------------------------------------

METRICS_PATH = "/metrics"
# The route's OpenAPI entry (configuration/openapi.py's route table form).
ROUTES: RouteTable = {METRICS_PATH: {"get": ("Prometheus metrics of this process (text exposition format); without the "
                                             "key "
                                 "when METRICS_PUBLIC=1.", None, (401,))}}


def open_paths(metrics_public: bool) -> tuple[str, ...]:
    """Paths common.auth serves without the key because of METRICS_PUBLIC."""
    return (METRICS_PATH,) if metrics_public else ()


def metrics_blueprint() -> Blueprint:
    """`GET /metrics` for a Flask app: this process's exposition. Behind the bearer key like every
    non-health route unless METRICS_PUBLIC=1 (common.auth leaves the path open then)."""
    from flask import Blueprint, Response

    bp = Blueprint("metrics", __name__)

    @bp.get(METRICS_PATH)
    def metrics() -> Response:
        body, content_type = process_metrics().exposition()
        return Response(body, status=200, content_type=content_type)

    return bp
