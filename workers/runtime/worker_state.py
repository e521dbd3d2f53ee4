"""What one worker process owns: its engine, memory client, model host, job runner and queue intake.

Built by the app factory (workers/http/app.py), with the engine the worker registry names
(workers/registry.py), and read by the HTTP routes and the queue intake (workers/runtime/queue_jobs.py)
alike; it lives in the runtime, below both, so neither reaches the other.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Protocol

from common.callbacks import CallbackSender
from common.jobs import JobJournal, wait_until
from configuration import ConfigurationError, worker_config
from configuration.openapi import RouteTable
from configuration.settings import Settings
from workers.runtime.broker_client import BrokerMemory
from workers.runtime.jobs import JobEngine, JobRunner
from workers.runtime.local_memory import LocalMemory
from workers.runtime.models import HostedEngine, MemoryClient, ModelHost
from workers.runtime.provenance import WeightHashes
from workers.runtime.queue_intake import QueueIntake
from workers.runtime.storage import make_storage

log = logging.getLogger(__name__)


class WorkerEngine(HostedEngine, Protocol):
    """What a worker process needs of its engine, whichever it is (workers/engines/base.py `Engine`): the
    host's lifecycle, the device it runs on, its background work started once, and the requests waiting in
    queues of its own (the chat engine's batchers; a job engine's jobs wait in the runner). An engine that
    runs queued jobs is also a `JobEngine` (workers/runtime/jobs.py)."""
    settings: Settings
    device: str

    def start(self, host: ModelHost) -> None: ...
    def queue_depth(self) -> int: ...


class WorkerState:
    """Everything one worker process owns: engine, model host, job runner."""

    def __init__(self, name: str, settings: Settings, engine: WorkerEngine):
        self.name = name
        self.settings = settings
        self.pid = os.getpid()
        self.config = worker_config(name)
        self.request_schema = self.config["request_schema"]
        self.engine = engine
        self.memory = make_memory_client(name, settings, self.engine.device)
        # One cache file per worker (processes never overwrite each other's), beside the journals.
        hashes = WeightHashes(settings.effective_state_dir / f"weight-hashes-{name}.json")
        self.host = ModelHost(self.engine, self.memory, hashes)
        # Only workers whose engine runs jobs (POST /generate) have a job runner and send callbacks; the chat
        # worker answers in the request.
        self.runner: JobRunner | None = None
        self.callbacks: CallbackSender | None = None
        _check_runs_jobs(name, self.request_schema, engine)
        if isinstance(engine, JobEngine):
            journal = JobJournal(settings.effective_state_dir / name, settings.job_retention_days)
            self.callbacks = CallbackSender(settings)
            self.runner = JobRunner(name, engine, self.host, make_storage(settings), self.callbacks, journal)
        self.shutting_down = False
        self._shutdown_lock = threading.Lock()
        self.routes: list[RouteTable] = []  # what /openapi.json describes, added as blueprints are registered
        self.intake: QueueIntake | None = None  # the app's Redis queue (REDIS_URL), started by create_app

    def memory_status(self) -> dict:
        from workers import devices
        models = self.host.status()
        device_memory = devices.device_memory(self.engine.device)
        memory = self.memory.status()
        resident = sum(m["resident_bytes"] for m in models.values())
        total = device_memory["total_bytes"] if device_memory else memory.get("budget_bytes", 0)
        return {
            "worker": self.name,
            "device": self.engine.device,
            "device_memory": device_memory,
            "models": models,
            "model_loaded": any(m["loaded"] for m in models.values()),
            "resident_bytes": resident,
            "busy": self.host.busy(),
            "memory": memory,
            # The previous pod's field names (GB), which callers still read.
            "allocated_vram": round(resident / 1024**3, 3),
            "total_vram": round(total / 1024**3, 3),
        }

    def queue_depth(self) -> int:
        """Requests waiting: the runner's queued jobs and the engine's own queues (one of them is empty)."""
        return (self.runner.queue_depth() if self.runner else 0) + self.engine.queue_depth()

    def shutdown(self, grace_s: float) -> None:
        """Stop taking work, let the running and queued jobs finish within `grace_s`."""
        with self._shutdown_lock:
            self.shutting_down = True
            if self.runner is None:
                return
            if self.intake is not None:
                self.intake.stop_taking()  # first: nothing new is taken from Redis while jobs drain
            self.runner.stop_accepting()
        deadline = time.monotonic() + grace_s
        if not wait_until(self.runner.idle, grace_s):
            log.warning("shutdown grace of %.0fs elapsed with jobs unfinished", grace_s)
            self.runner.fail_unfinished("the worker was stopped before the job finished")
            wait_until(self.runner.idle, 10)
        if self.callbacks is not None and not self.callbacks.flush(max(5.0, deadline - time.monotonic())):
            log.warning("callbacks still pending at exit; the next start resends them")
        if self.intake is not None:
            self.intake.close()  # acknowledge what finished; what is still held, the next start resumes


def _check_runs_jobs(name: str, request_schema: str | None, engine: WorkerEngine) -> None:
    """A worker with a request schema (configuration/workers.json) serves POST /generate, so its engine must
    run jobs, and one without must not: a registry and a configuration that disagree stop the start here."""
    runs_jobs = isinstance(engine, JobEngine)
    if runs_jobs != bool(request_schema):
        raise ConfigurationError(f"worker {name!r} has request_schema {request_schema!r} in configuration/workers.json "
                                 f"but its engine {type(engine).__name__} {'runs' if runs_jobs else 'runs no'} jobs")


def make_memory_client(name: str, settings: Settings, device: str) -> MemoryClient:
    """The orchestrator's broker when this worker runs under it (ORCHESTRATOR_URL), else the device alone."""
    if settings.orchestrator_url:
        return BrokerMemory(name, settings, device)
    return LocalMemory(settings, device)
