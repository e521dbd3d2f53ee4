"""The pod: the orchestrator's parts wired together (supervisors, memory broker, router, registrar)
and its lifecycle: start the workers, serve, and on SIGTERM stop taking jobs, let running ones finish
within SHUTDOWN_GRACE_S, then stop the workers and wait for them."""
from __future__ import annotations

import logging
import os
import secrets
import time

import requests

from common import errors
from common.callbacks import CallbackSender
from common.errors import WorkerUnavailable
from common.http import bearer_session, error_of, iso_time, local_url, refusal
from common.jobs import JobJournal
from configuration import enabled_workers, worker_config
from configuration.requests.orchestrator import MemoryActionRequest
from configuration.settings import Settings
from orchestrator.broker_api import broker_socket
from orchestrator.broker_service import MemoryBroker
from orchestrator.device_memory import DeviceMemory
from orchestrator.queues import QueueStatus
from orchestrator.registration import Registrar
from orchestrator.routing import Router
from orchestrator.supervisor import WorkerSupervisor

log = logging.getLogger(__name__)

CHILD_EXIT_MARGIN_S = 30.0


class Pod:
    def __init__(self, settings: Settings, environ: dict | None = None):
        self.settings = settings
        self.shutting_down = False
        self.url = local_url(settings, settings.orchestrator_port)
        env = dict(os.environ if environ is None else environ)
        # The memory broker listens on a loopback port of its own and answers only the token drawn here,
        # which only the workers get (orchestrator/broker_api.py); the public key does not reach it.
        self.broker_token = secrets.token_urlsafe(32)
        self.broker_socket = broker_socket()
        self.broker_url = f"http://127.0.0.1:{self.broker_socket.getsockname()[1]}"
        env["ORCHESTRATOR_URL"] = self.broker_url
        env["BROKER_TOKEN"] = self.broker_token
        self.device = DeviceMemory(settings)
        if self.device.uuid:  # the workers' CUDA and the broker's NVML readings name the same device (or MIG slice)
            env["CUDA_VISIBLE_DEVICES"] = self.device.uuid
        self.registrar = Registrar(settings)
        self.queues = QueueStatus(settings, list(enabled_workers(settings)))  # the app's Redis lists
        self.supervisors = {
            name: WorkerSupervisor(name, settings, env, on_ready=self.registrar.worker_ready,
                                   on_exit=self._worker_exited)
            for name in enabled_workers(settings)}
        self.broker = MemoryBroker(settings, self.device, self._unload)
        self.callbacks = CallbackSender(settings)
        self.router = Router(settings, self.supervisors, self.callbacks,
                             JobJournal(settings.effective_state_dir / "orchestrator", settings.job_retention_days))
        self._session = bearer_session(settings.api_key)

    def start(self) -> None:
        for supervisor in self.supervisors.values():
            supervisor.start()

    # -- what the parts tell each other -------------------------------------------------------------------
    def _worker_exited(self, worker: str, reason: str, unexpected: bool) -> None:
        self.broker.worker_gone(worker, reason)
        self.router.worker_exited(worker, reason, unexpected)

    def _unload(self, worker: str, model: str) -> tuple[bool, str]:
        """The broker asks an idle worker to unload a model (the worker refuses while a job uses it)."""
        supervisor = self.supervisors.get(worker)
        if supervisor is None:
            return False, "not a worker of this pod"
        try:
            response = self._session.post(f"{supervisor.url}/memory/unload", json={"which": model, "wait_s": 0},
                                          timeout=120)
        except requests.RequestException as exc:
            return False, f"unreachable ({type(exc).__name__})"
        if response.status_code == 200:
            return True, ""
        message = error_of(response).get("message", "")
        return False, f"HTTP {response.status_code} {message}".strip()

    # -- operator views -----------------------------------------------------------------------------------
    def workers_info(self) -> list[dict]:
        info = []
        for name, supervisor in self.supervisors.items():
            entry = supervisor.info()
            entry["registration"] = self.registrar.status(name)
            info.append(entry)
        return info

    def memory_status(self, history: int = 100) -> dict:
        status = self.broker.status(history)
        leased = status.pop("workers")
        workers = {}
        for name, supervisor in self.supervisors.items():
            broker_view = leased.get(name, {"models": {}})
            reported = self._worker_memory(supervisor) if supervisor.is_ready() else None
            models = {}
            for model in worker_config(name)["models"]:
                lease = broker_view["models"].get(model)
                mine = (reported or {}).get("models", {}).get(model, {})
                models[model] = {
                    "loaded": bool(lease) and lease["state"] != "loading",
                    "state": lease["state"] if lease else "unloaded",
                    "bytes": lease["bytes"] if lease else 0,
                    "busy": mine.get("busy", broker_view.get("busy", False) and bool(lease)),
                    "last_used": lease["last_used"] if lease else _last_used(mine.get("last_used")),
                    "load_count": mine.get("load_count"),
                }
            workers[name] = {"state": supervisor.state, "pid": supervisor.pid, "url": supervisor.url,
                             "busy": broker_view.get("busy", False), "jobs_running": broker_view.get("jobs_running", 0),
                             "working_bytes": broker_view.get("working_bytes", 0),
                             "leased_bytes": broker_view.get("leased_bytes", 0), "models": models}
        status["workers"] = workers
        return status

    def _worker_memory(self, supervisor: WorkerSupervisor) -> dict | None:
        try:
            response = self._session.get(f"{supervisor.url}/memory/status", timeout=2)
            return response.json() if response.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return None

    def memory_action(self, action: str, request: MemoryActionRequest) -> dict:
        """Operator load/unload of a worker's models: the worker does it, leasing through the broker.
        Raises WorkerUnavailable, or WorkerRefused with the worker's own error."""
        worker = request.worker
        supervisor = self.supervisors.get(worker)
        if supervisor is None or not supervisor.is_ready():
            state = supervisor.state if supervisor else "not enabled"
            raise WorkerUnavailable(f"the {worker} worker is {state}", retry_after_s=errors.RETRY_AFTER_S)
        forward = request.forward()
        try:
            response = self._session.post(f"{supervisor.url}/memory/{action}", json=forward,
                                          timeout=self.settings.lease_timeout_s + 60)
        except requests.RequestException as exc:
            raise WorkerUnavailable(f"the {worker} worker cannot be reached ({type(exc).__name__})",
                                    retry_after_s=errors.RETRY_AFTER_S) from None
        if response.status_code != 200:
            raise refusal(response, f"the {worker} worker")
        try:
            payload = response.json()
        except ValueError:
            payload = {}
        return {"worker": worker, **{k: payload[k] for k in ("success", "loaded", "unloaded") if k in payload}}

    # -- shutdown ---------------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop taking jobs; let routed jobs finish within the grace period; stop the workers (each lets its
        own running job finish); kill what is still there after the grace; deliver pending callbacks."""
        grace = self.settings.shutdown_grace_s
        self.shutting_down = True
        self.registrar.stop()
        self.router.stop_accepting()
        deadline = time.monotonic() + grace
        log.info("shutting down: waiting up to %.0fs for %d routed job(s)", grace, len(self.router.unfinished()))
        while self.router.unfinished() and time.monotonic() < deadline:
            time.sleep(0.1)
        left = self.router.fail_unfinished("the pod was stopped before the job finished (SHUTDOWN_GRACE_S)")
        if left:
            log.warning("grace period over: %d routed job(s) failed: %s", len(left), ", ".join(left))
        for supervisor in self.supervisors.values():
            supervisor.stop()
        child_deadline = time.monotonic() + grace + CHILD_EXIT_MARGIN_S
        for supervisor in self.supervisors.values():
            if not supervisor.join(max(0.0, child_deadline - time.monotonic())):
                log.error("%s worker did not stop in time; killing it", supervisor.name)
                supervisor.kill()
                supervisor.join(10)
        if not self.callbacks.flush(max(5.0, deadline - time.monotonic())):
            log.warning("callbacks still pending at exit; the next start resends them")
        log.info("shutdown complete")


def _last_used(epoch: float | None) -> str | None:
    """A worker reports when it last used a model in epoch seconds; the orchestrator shows ISO time."""
    return iso_time(epoch) if epoch else None
