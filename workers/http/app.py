"""The worker app factory. gunicorn calls `create_app("<worker>")` in the worker process, after the
fork, so models and CUDA state never live in the master."""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from flask import Flask

from common import auth, body, errors, metrics
from common.http import InsertionOrderJSON, install_options
from common.job_routes import limit_waits
from common.logging import Progress, configure_logging, install_request_id
from configuration.settings import Settings
from workers.http import common, generation, ops
from workers.registry import worker_code
from workers.runtime.queue_jobs import start_queue_intake
from workers.runtime.worker_state import WorkerState

log = logging.getLogger(__name__)
_CURRENT: WorkerState | None = None


def current_state() -> WorkerState | None:
    """The state of the worker app built in this process (for gunicorn's exit hook)."""
    return _CURRENT


# The libraries' logging modules, set up by `_library_logging` as they are imported.
LIBRARY_LOGGING = ("diffusers.utils.logging", "transformers.utils.logging")


def _library_logging() -> None:
    """diffusers and transformers log through this process's handler (one format), without progress bars.
    Each is set up the moment it is imported, not imported to be set up: a worker imports a library when its
    engine first needs it, so a chat worker never imports diffusers, and no worker imports it before its first
    model load (diffusers' import brings torch._dynamo with it: about 1.5 s of CPU per worker start)."""
    for name in LIBRARY_LOGGING:
        after_import(name, _quiet)


def _quiet(library_logging: ModuleType) -> None:
    library_logging.disable_progress_bar()
    library_logging.disable_default_handler()
    library_logging.enable_propagation()


def after_import(name: str, action: Callable[[ModuleType], None]) -> None:
    """Run `action(module)` once module `name` is imported: now if it already is, else right after its code
    has run, before the import returns to whoever asked for it (a finder ahead of the others on sys.meta_path
    wraps the module's loader, once). A second call for a name already waited on adds nothing."""
    if name in sys.modules:
        action(sys.modules[name])
    elif not any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, action))


class _AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, action: Callable[[ModuleType], None]):
        self.name = name
        self.action = action

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once; the other finders find the module
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        run, action = spec.loader.exec_module, self.action

        def exec_module(module: ModuleType) -> None:
            run(module)
            action(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]  # this spec's loader only
        return spec


def serve_app(worker: str) -> Flask:
    """The app a worker process serves (common/serve.py's gunicorn command names it by string, `WORKER_APP`,
    which tests/unit/test_architecture.py resolves to this function): settings from the environment;
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
    code = worker_code(worker)
    state = WorkerState(worker, settings, code.engine(settings))
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
    if state.runner is not None:  # an engine that runs jobs: POST /generate and /jobs/*
        app.register_blueprint(generation.bp)
        state.routes.append(generation.ROUTES[worker])
    if code.routes is not None:  # the worker's own routes (workers/registry.py)
        app.register_blueprint(code.routes.blueprint)
        state.routes.append(code.routes.table)
    state.intake = start_queue_intake(state)  # SDXL and WAN with REDIS_URL: the app's jobs
    startup.advance(note="routes registered; answering /ready")
    return app
