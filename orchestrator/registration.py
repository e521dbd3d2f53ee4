"""Registering the workers' public URLs with Supabase, as the previous pod did, once each is ready.

Which worker registers where is data (`registration` in configuration/workers.json): the WAN worker
calls `update-worker-url`, the chat worker `register-chat-worker`. The public URL is RunPod's proxy
URL, `https://{RUNPOD_POD_ID}-{port}.proxy.runpod.net`; without RUNPOD_POD_ID there is no public URL
to register, which is logged and shown in `GET /workers`, not guessed. Registration runs on its own
thread with retries and never delays or blocks a worker.
"""
from __future__ import annotations

import logging
import threading
import time

from common import supabase
from common.http import now_iso
from configuration import worker_config
from configuration.settings import Settings

log = logging.getLogger(__name__)

ATTEMPTS = 4


def public_url(settings: Settings, worker: str) -> str | None:
    if not settings.runpod_pod_id:
        return None
    return f"https://{settings.runpod_pod_id}-{settings.port_of(worker)}.proxy.runpod.net"


def registration_body(worker: str, url: str, timestamp: str) -> tuple[str, dict]:
    """(function name, body) of a worker's registration call; the bodies are the previous pod's."""
    config = worker_config(worker)
    function = config["registration"]
    body = {"worker_url": url, "auto_registered": True, "registration_method": "orchestrator", "timestamp": timestamp}
    if function == "register-chat-worker":
        body.update(worker_type=worker, capabilities={"role": config["role"], "models": config["models"],
                                                      "enhance": True, "chat": True, "openai_compatible": True})
    else:
        body["detection_method"] = "RUNPOD_POD_ID"
    return function, body


class Registrar:
    def __init__(self, settings: Settings, backoff_s: float = 1.0):
        self.settings = settings
        self.backoff_s = backoff_s
        self.enabled = bool(settings.register_with_supabase and settings.supabase_url)
        self.results: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._client = (supabase.make_client(settings.supabase_url, settings.supabase_service_key, timeout_s=15)
                        if self.enabled and settings.supabase_service_key else None)

    def worker_ready(self, worker: str) -> None:
        """Called by the supervisor each time a worker becomes ready (a restarted worker registers again)."""
        if not self.enabled or not worker_config(worker).get("registration"):
            return
        url = public_url(self.settings, worker)
        if self._client is None:
            self._result(worker, "skipped", "SUPABASE_SERVICE_KEY is not set: the app's functions need it")
            log.warning("not registering the %s worker with Supabase: SUPABASE_SERVICE_KEY is not set", worker)
            return
        if url is None:
            self._result(worker, "skipped", "RUNPOD_POD_ID is not set: no public URL to register")
            log.warning("not registering the %s worker with Supabase: RUNPOD_POD_ID is not set", worker)
            return
        threading.Thread(target=self._register, args=(worker, url), name=f"register-{worker}", daemon=True).start()

    def _register(self, worker: str, url: str) -> None:
        function, body = registration_body(worker, url, now_iso())
        reason = ""
        assert self._client is not None
        for attempt in range(1, ATTEMPTS + 1):
            # Any failure is retried: the app's function answers 400 while the worker's public URL does not
            # answer /health yet (RunPod's proxy can lag the worker's own readiness).
            try:
                ok = bool(supabase.invoke(self._client, function, body).get("success"))
                reason = "" if ok else "answered without success: true"
            except supabase.SupabaseError as exc:
                ok, reason = False, exc.message + (f" (HTTP {exc.status})" if exc.status else "")
            if ok:
                self._result(worker, "registered", f"{function}: {url}")
                log.info("registered the %s worker with Supabase (%s): %s", worker, function, url)
                return
            if attempt < ATTEMPTS:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        self._result(worker, "failed", f"{function}: {reason} after {ATTEMPTS} attempts")
        log.error("registering the %s worker with Supabase failed: %s", worker, reason)

    def _result(self, worker: str, status: str, detail: str) -> None:
        with self._lock:
            self.results[worker] = {"status": status, "detail": detail, "at": now_iso()}

    def status(self, worker: str) -> dict | None:
        with self._lock:
            return self.results.get(worker)

