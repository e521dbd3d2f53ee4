"""The worker app factory. gunicorn calls `create_app("<worker>")` in the worker process, after the
fork, so models and CUDA state never live in the master."""
from __future__ import annotations

import importlib
import logging
import os
import threading
import time

from flask import Flask

from common import auth, body, errors, metrics
from common.callbacks import CallbackSender
from common.http import InsertionOrderJSON, install_options
from common.job_routes import limit_waits
from common.jobs import JobJournal, wait_until
from common.logging import Progress, configure_logging, install_request_id
from configuration import worker_config
from configuration.openapi import RouteTable
from configuration.settings import Settings
from workers.http import common, generation, ops
from workers.runtime.broker_client import BrokerMemory
from workers.runtime.jobs import JobRunner
from workers.runtime.local_memory import LocalMemory
from workers.runtime.models import ModelHost
from workers.runtime.provenance import WeightHashes
from workers.runtime.queue_intake import QueueIntake
from workers.runtime.queue_jobs import start_queue_intake
from workers.runtime.storage import make_storage

log = logging.getLogger(__name__)
_CURRENT: WorkerState | None = None


def current_state() -> WorkerState | None:
    """The state of the worker app built in this process (for gunicorn's exit hook)."""
    return _CURRENT


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


def _library_logging() -> None:
    """diffusers and transformers log through this process's handler (one format), without progress bars."""
    import diffusers.utils.logging
    import transformers.utils.logging
    for library in (diffusers.utils.logging, transformers.utils.logging):
        library.disable_progress_bar()
        library.disable_default_handler()
        library.enable_propagation()


def serve_app(worker: str) -> Flask:
    """The app a worker process serves (common/serve.py's gunicorn command): settings from the environment;
    a production worker refuses to start where no usable CUDA device is, saying why, instead of running
    production weights on the CPU in fp32."""
    from workers import devices

    settings = Settings.from_env()
    devices.require_accelerator(settings.model_profile)
    return create_app(worker, settings)


def create_app(worker: str, settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    configure_logging(worker, settings.log_level, settings.log_format)
    process_metrics = metrics.configure_metrics(worker, settings.model_profile)
    startup = Progress(log, f"{worker} worker startup", 3, "steps", every_s=0.0)
    _library_logging()
    if settings.model_profile == "placeholder":
        from workers.placeholders import ensure_placeholder_models
        ensure_placeholder_models(settings.placeholder_models_dir)
    startup.advance(note=f"{settings.model_profile} models on disk")
    if not settings.api_key:
        log.warning("WORKER_API_KEY is not set: serving without authentication on loopback %s only", settings.bind_host)

    app = Flask(f"ourvidz-{worker}")
    app.json = InsertionOrderJSON(app)
    global _CURRENT
    state = WorkerState(worker, settings)
    _CURRENT = state
    app.extensions["worker_state"] = state
    state.engine.start(state.host)  # background work of the engine (the chat worker's batchers)
    startup.advance(note=f"engine on {state.engine.device}, job journal and memory client ready")
    install_request_id(app)
    limit_waits(settings.gunicorn_threads)  # `?wait=` never takes the last threads (/health, job status)
    errors.register_error_handlers(app)
    body.install_body_cap(app, settings.max_body_bytes)
    install_options(app)  # OPTIONS: 204 with Allow, before auth (the app's endpoint discovery sends no key)
    auth.install_auth(app, settings.api_keys, open_paths=metrics.open_paths(settings.metrics_public))
    app.register_blueprint(common.bp)
    state.routes.append(common.ROUTES)
    app.register_blueprint(metrics.metrics_blueprint())
    state.routes.append(metrics.ROUTES)
    app.register_blueprint(ops.bp)
    state.routes.append(ops.ROUTES)
    process_metrics.on_scrape(lambda m: ops.refresh_metrics(m, state), key="worker")
    if state.request_schema:
        app.register_blueprint(generation.bp)
        state.routes.append(generation.ROUTES[worker])
    if state.config.get("http"):
        # A worker's own routes: the module's blueprint and its ROUTES table.
        module_name, attr = state.config["http"].split(":")
        module = importlib.import_module(module_name)
        app.register_blueprint(getattr(module, attr))
        state.routes.append(module.ROUTES)
    state.intake = start_queue_intake(state)  # SDXL and WAN with REDIS_URL: the app's jobs
    startup.advance(note="routes registered; answering /ready")
    return app
