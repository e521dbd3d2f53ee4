"""Registering the workers' public URLs with Supabase once each is ready, and keeping the app's view fresh.

Which worker registers where is data (`registration` in configuration/workers.json): the WAN worker
calls `update-worker-url`, the chat worker `register-chat-worker`. The public URL is the worker's own
setting (WAN_PUBLIC_URL, CHAT_PUBLIC_URL), else PUBLIC_URL_TEMPLATE, else RunPod's proxy form
`https://{pod_id}-{port}.proxy.runpod.net` when RUNPOD_POD_ID is set (Settings.public_url); without
any there is nothing to register, which is logged and shown in `GET /workers`, not guessed.

Registration never gives up: the app's function answers 400 while the public URL does not answer
`/health` yet (RunPod's proxy can take well over 10 s after the port opens), so every failure is retried
with a doubling delay capped at REGISTRATION_BACKOFF_MAX_S until it succeeds. It starts again at every
worker start (a newer start supersedes the older loop), and a registered worker registers again every
REGISTRATION_REFRESH_S, since the app's row can be overwritten or lost.

The app's roleplay uses the chat worker only while its health entry (`workerHealthCache.chatWorker`,
written by the app's `health-check-workers` function) is under 120 s old, and only browsers invoke that
function today. While a chat worker is registered, the orchestrator invokes it itself every
HEALTH_CHECK_WORKERS_S with the service key. Everything runs on threads of its own and never delays or
blocks a worker.
"""
from __future__ import annotations

import logging
import threading

from common import supabase
from common.http import now_iso
from common.retry import backoff_delay
from configuration import worker_capabilities, worker_config
from configuration.settings import Settings

log = logging.getLogger(__name__)

HEALTH_CHECK_FUNCTION = "health-check-workers"
CHAT_REGISTRATION = "register-chat-worker"
LOG_EVERY_ATTEMPTS = 10  # a failing registration logs its first attempt, then every tenth (the rest at debug)


def registration_body(worker: str, url: str, timestamp: str, method: str) -> tuple[str, dict]:
    """(function name, body) of a worker's registration call; the bodies are the previous pod's.
    `method`: how the URL was found (`detection_method`)."""
    function = worker_config(worker)["registration"]
    body = {"worker_url": url, "auto_registered": True, "registration_method": "orchestrator", "timestamp": timestamp}
    if function == CHAT_REGISTRATION:
        body.update(worker_type=worker, capabilities=worker_capabilities(worker))
    else:
        body["detection_method"] = method
    return function, body


def detection_method(settings: Settings, worker: str) -> str:
    """Which setting gave the worker's public URL."""
    if {"wan": settings.wan_public_url, "chat": settings.chat_public_url}.get(worker):
        return f"{worker.upper()}_PUBLIC_URL"
    return "PUBLIC_URL_TEMPLATE" if settings.public_url_template else "RUNPOD_POD_ID"


class Registrar:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.enabled = bool(settings.register_with_supabase and settings.supabase_url)
        self.results: dict[str, dict] = {}
        self.health_check: dict | None = None  # the latest health-check-workers call
        self._lock = threading.Lock()
        self._starts: dict[str, int] = {}  # worker -> its latest start; an older registration loop ends
        self._stop = threading.Event()
        self._chat_registered = threading.Event()
        self._health_thread: threading.Thread | None = None
        self._client = (supabase.make_client(settings.supabase_url, settings.supabase_service_key, timeout_s=15)
                        if self.enabled and settings.supabase_service_key else None)

    def worker_ready(self, worker: str) -> None:
        """Called by the supervisor each time a worker becomes ready (a restarted worker registers again)."""
        if not self.enabled or not worker_config(worker).get("registration"):
            return
        url = self.settings.public_url(worker)
        if self._client is None:
            self._result(worker, "skipped", "SUPABASE_SERVICE_KEY is not set: the app's functions need it")
            log.warning("not registering the %s worker with Supabase: SUPABASE_SERVICE_KEY is not set", worker)
            return
        if url is None:
            detail = (f"no public URL: set {worker.upper()}_PUBLIC_URL or PUBLIC_URL_TEMPLATE (RUNPOD_POD_ID is not "
                      "set either)")
            self._result(worker, "skipped", detail)
            log.warning("not registering the %s worker with Supabase: %s", worker, detail)
            return
        with self._lock:
            start = self._starts[worker] = self._starts.get(worker, 0) + 1
        self._result(worker, "registering", url, registrations=0, failed_attempts=0)
        threading.Thread(target=self._keep_registered, args=(worker, url, start), name=f"register-{worker}",
                         daemon=True).start()
        if worker_config(worker)["registration"] == CHAT_REGISTRATION:
            self._start_health_checks()

    def stop(self) -> None:
        """Ends every loop (the pod is shutting down)."""
        self._stop.set()
        self._chat_registered.set()  # wakes the health-check loop, which then sees the stop

    def _current(self, worker: str, start: int) -> bool:
        with self._lock:
            return not self._stop.is_set() and self._starts.get(worker) == start

    def _keep_registered(self, worker: str, url: str, start: int) -> None:
        """Register until it succeeds, then again every REGISTRATION_REFRESH_S, until a newer start of
        the worker or the pod's shutdown."""
        settings = self.settings
        method = detection_method(settings, worker)
        failures, registrations = 0, 0
        while self._current(worker, start):
            function, body = registration_body(worker, url, now_iso(), method)
            ok, reason = self._invoke(function, body)
            if not self._current(worker, start):
                return
            if ok:
                registrations += 1
                self._result(worker, "registered", f"{function}: {url}", registrations=registrations,
                             failed_attempts=failures)
                log.info("registered the %s worker with Supabase (%s): %s%s", worker, function, url,
                         f" after {failures} failed attempt(s)" if failures else "")
                if function == CHAT_REGISTRATION:
                    self._chat_registered.set()
                failures = 0
                if settings.registration_refresh_s <= 0 or self._stop.wait(settings.registration_refresh_s):
                    return
                continue
            failures += 1
            delay = backoff_delay(failures, settings.registration_backoff_s, settings.registration_backoff_max_s)
            self._result(worker, "retrying", f"{function}: {reason}; attempt {failures}, next in {delay:.1f}s",
                         registrations=registrations, failed_attempts=failures)
            level = logging.WARNING if failures == 1 or failures % LOG_EVERY_ATTEMPTS == 0 else logging.DEBUG
            log.log(level, "registering the %s worker with Supabase failed (attempt %d: %s); retrying in %.1fs",
                    worker, failures, reason, delay)
            if self._stop.wait(delay):
                return

    def _invoke(self, function: str, body: dict) -> tuple[bool, str]:
        """(succeeded, why not) of one call of an app function with the service key."""
        if self._client is None:
            raise RuntimeError("app functions are invoked only with the service key's client")
        try:
            answer = supabase.invoke(self._client, function, body)
        except supabase.SupabaseError as exc:
            return False, exc.message + (f" (HTTP {exc.status})" if exc.status else "")
        if function != HEALTH_CHECK_FUNCTION and not answer.get("success"):
            return False, "answered without success: true"
        return True, ""

    # -- the app's chat health entry ------------------------------------------------------------------------
    def _start_health_checks(self) -> None:
        if self.settings.health_check_workers_s <= 0:
            return
        with self._lock:
            if self._health_thread is not None:
                return
            self._health_thread = threading.Thread(target=self._health_checks, name="health-check-workers",
                                                   daemon=True)
        self._health_thread.start()

    def _health_checks(self) -> None:
        """Once the chat worker is registered: invoke `health-check-workers` now and every period."""
        self._chat_registered.wait()
        while not self._stop.is_set():
            ok, reason = self._invoke(HEALTH_CHECK_FUNCTION, {})
            with self._lock:
                previous = self.health_check or {}
                self.health_check = {"status": "ok" if ok else "failed", "detail": reason or HEALTH_CHECK_FUNCTION,
                                     "at": now_iso(), "calls": previous.get("calls", 0) + 1}
            if not ok:  # logged when it starts failing; GET /workers shows every later failure
                log.log(logging.DEBUG if previous.get("status") == "failed" else logging.WARNING,
                        "invoking %s failed: %s; again every %.0fs", HEALTH_CHECK_FUNCTION, reason,
                        self.settings.health_check_workers_s)
            if self._stop.wait(self.settings.health_check_workers_s):
                return

    # -- status -------------------------------------------------------------------------------------------------
    def _result(self, worker: str, status: str, detail: str, **counts: int) -> None:
        with self._lock:
            self.results[worker] = {"status": status, "detail": detail, "at": now_iso(), **counts}

    def status(self, worker: str) -> dict | None:
        """The worker's registration for GET /workers; the chat worker's also says how the app's health
        entry is kept fresh (`health_check`)."""
        with self._lock:
            result = self.results.get(worker)
            if result is None:
                return None
            result = dict(result)
            if (worker_config(worker).get("registration") == CHAT_REGISTRATION
                    and self.settings.health_check_workers_s > 0):
                result["health_check"] = dict(self.health_check) if self.health_check else None
            return result
