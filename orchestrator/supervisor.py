"""Supervision: one thread per worker process, the only thread that starts, watches or restarts it.

A worker is started under gunicorn in its own session (so a Ctrl-C in the terminal reaches only the
orchestrator), through orchestrator.launch (so it dies with the orchestrator). It is `ready` when
its `GET /ready` answers 200 (polled; no fixed sleeps). When it dies, everything left in its process
group is killed, `on_exit` tells the broker and the router, and it is restarted after a capped
exponential backoff; after `restart_limit` consecutive failures it is `failed` and stays so.

States: starting -> ready -> (restarting -> starting -> ready)* -> failed | stopping -> stopped.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import requests

from common.http import local_url, now_iso, pod_session
from common.logging import Progress
from common.metrics import process_metrics
from common.retry import backoff_delay
from common.serve import gunicorn_command
from configuration.settings import Settings

log = logging.getLogger(__name__)

READY_POLL_S = 0.1
EXIT_POLL_S = 0.1


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def kill_group(pgid: int, sig: int) -> bool:
    """Signal a whole process group; False when nothing is left in it."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        log.error("not allowed to signal process group %d", pgid)
        return False


class WorkerSupervisor:
    def __init__(self, name: str, settings: Settings, env: dict, on_ready: Callable[[str], None] | None = None,
                 on_exit: Callable[[str, str, bool], None] | None = None,
                 command: list[str] | None = None, ready_url: str | None = None) -> None:
        self.name = name
        self.settings = settings
        self.port = settings.port_of(name)
        self.url = local_url(settings, self.port)
        self.ready_url = ready_url or self.url + "/ready"
        self.env = env
        self.command = command or [sys.executable, "-m", "orchestrator.launch", str(os.getpid()),
                                   *gunicorn_command(name, settings, self.port)]
        self.on_ready = on_ready
        self.on_exit = on_exit
        self.state = "starting"
        self.pid: int | None = None
        self.restarts = 0            # restarts performed in this orchestrator's life
        self.failures = 0            # consecutive failures (reset after RESTART_RESET_S of readiness)
        self.last_exit: str | None = None
        self.started_at: str | None = None
        self.ready_at: str | None = None
        self.incarnation = 0         # increases with every process started
        self._proc: subprocess.Popen | None = None
        self._not_ready = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"supervise-{name}", daemon=True)

    # -- public ------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def is_ready(self) -> bool:
        return self.state == "ready"

    def info(self) -> dict:
        return {"name": self.name, "state": self.state, "pid": self.pid, "url": self.url, "port": self.port,
                "restarts": self.restarts, "consecutive_failures": self.failures, "last_exit": self.last_exit,
                "started_at": self.started_at, "ready_at": self.ready_at, "incarnation": self.incarnation}

    def stop(self) -> None:
        """Ask the worker to stop gracefully (gunicorn: SIGTERM lets running jobs finish)."""
        with self._lock:
            self._stop.set()
            if self.state not in ("failed", "stopped"):
                self.state = "stopping"
            proc = self._proc
        if proc is not None and proc.poll() is None:
            kill_group(proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        """Last resort after the grace period: SIGKILL everything in the worker's process group."""
        with self._lock:
            proc = self._proc
        if proc is not None:
            kill_group(proc.pid, signal.SIGKILL)

    def join(self, timeout_s: float) -> bool:
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    # -- the supervising thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            proc = self._spawn()
            if proc is None:
                return
            ready_since = self._wait_ready(proc)
            returncode = self._wait_exit(proc)
            self._reap_group(proc.pid)
            reason = describe_exit(returncode)
            if self._not_ready:
                reason = f"{reason} after it was not ready within {self.settings.worker_ready_timeout_s:.0f}s"
            with self._lock:
                self._proc = None
                self.pid = None
                self.last_exit = reason
                stopping = self._stop.is_set()
            if stopping:
                log.info("%s worker stopped (%s)", self.name, reason)
                self._notify(self.on_exit, self.name, f"the {self.name} worker was stopped ({reason})", False)
                break
            log.error("%s worker died: %s", self.name, reason)
            if ready_since is not None and time.monotonic() - ready_since >= self.settings.restart_reset_s:
                self.failures = 0
            self.failures += 1
            self._notify(self.on_exit, self.name, f"the {self.name} worker process {reason}", True)
            if self.failures > self.settings.restart_limit:
                self.state = "failed"
                log.error("%s worker failed %d times in a row; not restarting it again", self.name, self.failures)
                return
            delay = backoff_delay(self.failures, self.settings.restart_backoff_s, self.settings.restart_backoff_max_s)
            self.state = "restarting"
            log.warning("restarting %s worker in %.1fs (failure %d of at most %d)", self.name, delay,
                        self.failures, self.settings.restart_limit)
            if self._stop.wait(delay):
                break
            self.restarts += 1
            process_metrics().worker_restarts.labels(self.name).inc()
        with self._lock:
            if self.state != "failed":
                self.state = "stopped"

    def _notify(self, hook: Callable[..., None] | None, *args: object) -> None:
        """Run a hook; whatever it raises is logged, never allowed to end the supervision."""
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:
            log.exception("%s supervisor: hook %s failed", self.name, getattr(hook, "__name__", hook))

    def _spawn(self) -> subprocess.Popen | None:
        with self._lock:
            if self._stop.is_set():
                return None
            self.state = "starting"
            self.ready_at = None
            self._proc = subprocess.Popen(self.command, env=self.env, start_new_session=True)  # noqa: S603 (the worker's argv from common/serve.py, no shell)
            self.pid = self._proc.pid
            self.incarnation += 1
            self.started_at = now_iso()
        log.info("started %s worker, pid %d, port %d", self.name, self._proc.pid, self.port)
        return self._proc

    def _wait_ready(self, proc: subprocess.Popen) -> float | None:
        """Poll /ready until 200; None if the process exits, the timeout passes (it is then killed) or a
        stop is requested first."""
        started = time.monotonic()
        deadline = started + self.settings.worker_ready_timeout_s
        self._not_ready = False
        session = pod_session()
        waiting = Progress(log, f"waiting for the {self.name} worker's /ready", self.settings.worker_ready_timeout_s,
                           "s", every_s=10.0)
        while not self._stop.is_set() and proc.poll() is None:
            waiting.update(round(time.monotonic() - started))
            try:
                if session.get(self.ready_url, timeout=2).status_code == 200:
                    with self._lock:
                        if self._stop.is_set():
                            return None
                        self.state = "ready"
                        self.ready_at = now_iso()
                    log.info("%s worker ready (pid %d)", self.name, proc.pid)
                    self._notify(self.on_ready, self.name)
                    return time.monotonic()
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                log.error("%s worker not ready after %.0fs; killing it", self.name,
                          self.settings.worker_ready_timeout_s)
                self._not_ready = True
                kill_group(proc.pid, signal.SIGKILL)
                return None
            time.sleep(READY_POLL_S)
        return None

    def _wait_exit(self, proc: subprocess.Popen) -> int:
        while True:
            try:
                return proc.wait(timeout=EXIT_POLL_S)
            except subprocess.TimeoutExpired:
                continue

    @staticmethod
    def _reap_group(pgid: int) -> None:
        """The gunicorn master is gone; anything still in its group (a worker process it left) goes too."""
        kill_group(pgid, signal.SIGKILL)
