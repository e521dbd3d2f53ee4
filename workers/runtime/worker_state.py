"""What one worker process owns: its engine, memory client, model host, job runner and queue intake.

Built by the app factory (workers/http/app.py) and read by the HTTP routes and the queue intake
(workers/runtime/queue_jobs.py) alike; it lives in the runtime, below both, so neither reaches the other.
"""
from __future__ import annotations

import importlib
import logging
import os
import threading
import time

from common.callbacks import CallbackSender
from common.jobs import JobJournal, wait_until
from configuration import worker_config
from configuration.openapi import RouteTable
from configuration.settings import Settings
from workers.runtime.broker_client import BrokerMemory
from workers.runtime.jobs import JobRunner
from workers.runtime.local_memory import LocalMemory
from workers.runtime.models import ModelHost
from workers.runtime.provenance import WeightHashes
from workers.runtime.queue_intake import QueueIntake
from workers.runtime.storage import make_storage

log = logging.getLogger(__name__)


class WorkerState:
    """Everything one worker process owns: engine, model host, job runner."""

    def __init__(self, name: str, settings: Settings):
        self.name = name
        self.settings = settings
        self.pid = os.getpid()
        self.config = worker_config(name)
        self.request_schema = self.config["request_schema"]
        module_name, class_name = self.config["engine"].split(":")
        engine_cls = getattr(importlib.import_module(module_name), class_name)
        self.engine = engine_cls(settings)
        self.memory = make_memory_client(name, settings, self.engine.device)
        # One cache file per worker (processes never overwrite each other's), beside the journals.
        hashes = WeightHashes(settings.effective_state_dir / f"weight-hashes-{name}.json")
        self.host = ModelHost(self.engine, self.memory, hashes)
        # Only workers that take jobs (POST /generate) have a job runner; the chat worker answers in the request.
        self.runner: JobRunner | None = None
        if self.request_schema:
            journal = JobJournal(settings.effective_state_dir / name, settings.job_retention_days)
            self.runner = JobRunner(name, self.engine, self.host, make_storage(settings), CallbackSender(settings),
                                    journal)
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
        return self.runner.queue_depth() if self.runner else self.engine.queue_depth()

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
        if not self.runner.callbacks.flush(max(5.0, deadline - time.monotonic())):
            log.warning("callbacks still pending at exit; the next start resends them")
        if self.intake is not None:
            self.intake.close()  # acknowledge what finished; what is still held, the next start resumes


def make_memory_client(name: str, settings: Settings, device: str) -> BrokerMemory | LocalMemory:
    """The orchestrator's broker when this worker runs under it (ORCHESTRATOR_URL), else the device alone."""
    if settings.orchestrator_url:
        return BrokerMemory(name, settings, device)
    return LocalMemory(settings, device)
