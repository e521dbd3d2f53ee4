"""Test support: free ports, a real HTTP callback receiver, worker processes under gunicorn, the
orchestrator as a process."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
API_KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll_until(predicate, timeout_s: float, interval_s: float = 0.05):
    """Call `predicate` until it returns a truthy value or `timeout_s` has passed; return its last value
    (falsy at the deadline). The one polling loop of the tests: wait_until and the receivers use it."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval_s)


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.05):
    """`predicate`'s first truthy value; AssertionError naming `what` when none came within `timeout_s`."""
    value = poll_until(predicate, timeout_s, interval_s)
    if not value:
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
    return value


class LocalHTTPServer:
    """A ThreadingHTTPServer on a free loopback port serving `handler` from a daemon thread: the one
    scaffold under the tests' stand-in servers (receiver, static files, failing storage, ...)."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


TERMINAL = ("completed", "failed", "cancelled")


class CallbackReceiver(LocalHTTPServer):
    """A real HTTP server recording every POST. `fail_first` answers 503 to that many requests; down()
    answers 503 to everything until up(), and accepted() counts only what came after up()."""

    def __init__(self, fail_first: int = 0, status: int = 200):
        self.requests: list[dict] = []
        self.fail_first = fail_first
        self.status = status
        self.accepted_from = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                try:
                    parsed = json.loads(raw) if raw else None
                except ValueError:
                    parsed = None
                with receiver._lock:
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers), "raw": raw,
                                              "body": parsed})
                    failing = receiver.fail_first > 0
                    if failing:
                        receiver.fail_first -= 1
                code = 503 if failing else receiver.status
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{\"success\": true}")

            def log_message(self, *args):
                pass

        super().__init__(Handler)
        self.url += "/functions/v1/job-callback"

    def bodies(self, job_id: str | None = None) -> list[dict]:
        with self._lock:
            return [r["body"] for r in self.requests if job_id is None or (r["body"] or {}).get("job_id") == job_id]

    def wait_for(self, count: int, job_id: str | None = None, timeout_s: float = 30) -> list[dict]:
        """The bodies (of `job_id`) once there are `count`; what there is at the deadline otherwise."""
        poll_until(lambda: len(self.bodies(job_id)) >= count, timeout_s)
        return self.bodies(job_id)

    def terminal(self, job_id: str) -> list[dict]:
        """The job's callbacks that carry a terminal status."""
        return [b for b in self.bodies(job_id) if b.get("status") in TERMINAL]

    def wait_terminal(self, job_id: str, timeout_s: float = 180) -> dict:
        """The job's first terminal callback; AssertionError (with every callback of the job) if none came."""
        found = poll_until(lambda: self.terminal(job_id), timeout_s)
        assert found, f"no terminal callback for {job_id} in {timeout_s} s: {self.bodies(job_id)}"
        return found[0]

    def down(self) -> None:
        """Answer 503 to every request until up()."""
        with self._lock:
            self.fail_first = 10**9

    def up(self) -> None:
        with self._lock:
            self.fail_first = 0
            self.accepted_from = len(self.requests)

    def accepted(self, job_id: str) -> list[dict]:
        """Callbacks for the job since the last up() (a 503 answers every request made while down)."""
        with self._lock:
            return [r["body"] for r in self.requests[self.accepted_from:] if (r["body"] or {}).get("job_id") == job_id]

    def wait_accepted(self, job_id: str, timeout_s: float = 30) -> list[dict]:
        return poll_until(lambda: self.accepted(job_id), timeout_s)


class StaticServer(LocalHTTPServer):
    """A real HTTP server answering GETs from `routes` {path: (status, content_type, body)}; a `str`
    body is a redirect target. Records the paths it was asked for."""

    def __init__(self, routes: dict):
        self.routes = routes
        self.requested: list[str] = []
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server_self.requested.append(self.path)
                status, ctype, data = server_self.routes.get(self.path, (404, "text/plain", b""))
                self.send_response(status)
                if isinstance(data, str):
                    self.send_header("Location", data)
                    data = b""
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        super().__init__(Handler)


@contextlib.contextmanager
def in_process_worker(worker: str, tmp: Path, placeholder_dir: Path):
    """The worker's real Flask app in this process (tests/app/), on the placeholder models, its callbacks
    going to a receiver of its own: yields (test client, WorkerState, receiver, output folder)."""
    from configuration.settings import Settings
    from workers.http.app import create_app

    receiver = CallbackReceiver()
    try:
        settings = Settings(placeholder_models_dir=placeholder_dir, output_dir=tmp / "out", api_key=API_KEY,
                            fetch_allow_private=True, callback_url=receiver.url, callback_backoff_s=0.05)
        app = create_app(worker, settings)
        yield app.test_client(), app.extensions["worker_state"], receiver, tmp / "out"
    finally:
        receiver.close()


def base_env(tmp_path: Path, placeholder_dir: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SUPABASE", "CALLBACK", "JOB_CALLBACK", "WORKER_API", "MODEL_", "REDIS", "QUEUE_",
                                "SDXL_QUEUE", "WAN_QUEUE"))}
    env.update({
        "PYTHONPATH": str(REPO),
        "BIND_HOST": "127.0.0.1",
        "WORKER_API_KEY": API_KEY,
        "MODEL_PROFILE": "placeholder",
        "PLACEHOLDER_MODELS_DIR": str(placeholder_dir),
        "OUTPUT_DIR": str(tmp_path / "outputs"),
        "FETCH_ALLOW_PRIVATE": "true",
        "CALLBACK_BACKOFF_S": "0.1",
        "SHUTDOWN_GRACE_S": "20",
        "LOG_LEVEL": "INFO",
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Client:
    def __init__(self, base_url: str, key: str | None = API_KEY):
        self.base_url = base_url
        # the pod's own session (common.http.pod_session): a connection idle past half the servers' keep-alive
        # is not reused, so no request meets a keep-alive close on a loaded machine
        from common.http import bearer_session

        self.session = bearer_session(key or "")

    def get(self, path: str, **kw):
        return self.session.get(self.base_url + path, timeout=kw.pop("timeout", 60), **kw)

    def post(self, path: str, **kw):
        return self.session.post(self.base_url + path, timeout=kw.pop("timeout", 120), **kw)

    def wait_job(self, job_id: str, timeout_s: float = 120, statuses=("completed", "failed", "cancelled")) -> dict:
        deadline = time.monotonic() + timeout_s
        record = {}
        while time.monotonic() < deadline:
            record = self.get(f"/jobs/{job_id}").json()
            if record.get("status") in statuses:
                return record
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not reach {statuses}: {record}")


class WorkerProcess:
    """A worker under gunicorn on a free port, exactly as the orchestrator starts it."""

    def __init__(self, worker: str, env: dict, port: int | None = None):
        from common.serve import gunicorn_command
        from configuration.settings import Settings

        self.worker = worker
        self.port = port or free_port()
        self.env = env
        settings = Settings.from_env(env)
        self.command = gunicorn_command(worker, settings, self.port)
        self.log_path = Path(env["OUTPUT_DIR"]).parent / f"{worker}-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = Client(self.url, env.get("WORKER_API_KEY") or None)

    def start(self, timeout_s: float = 120) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command, env=self.env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.worker} exited {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/ready", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.worker} not ready in {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout_s: float = 60) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)
        finally:
            self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class OrchestratorProcess:
    """`python -m orchestrator` (what infrastructure/startup.sh execs) with this interpreter, its output
    in a log file."""

    def __init__(self, env: dict, log_path: Path):
        self.env = env
        self.port = int(env["ORCHESTRATOR_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = Client(self.url, env.get("WORKER_API_KEY"))
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.tmp = log_path.parent
        self.state_dir = Path(env["STATE_DIR"]) if env.get("STATE_DIR") else None
        self.output_dir = Path(env["OUTPUT_DIR"])
        self.ports = {w: int(env[var]) for w, var in WORKER_PORTS.items() if var in env}
        self.receiver: CallbackReceiver | None = None

    def start(self) -> OrchestratorProcess:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator"], env=self.env, cwd=REPO, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout_s: float = 180) -> dict:
        """Poll GET /ready (the readiness gate; no fixed sleeps)."""
        deadline = time.monotonic() + timeout_s
        last = None
        proc = self.started()
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"orchestrator exited {proc.returncode}:\n{self.log()}"
            try:
                last = requests.get(self.url + "/ready", timeout=2)
                if last.status_code == 200:
                    return last.json()
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready in {timeout_s}s: {last and last.text}\n{self.log()}")

    def started(self) -> subprocess.Popen:
        assert self.proc is not None, "start() the orchestrator first"
        return self.proc

    def workers(self) -> dict:
        return {w["name"]: w for w in self.client.get("/workers").json()["workers"]}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:]

    def stop(self, timeout_s: float = 90) -> int:
        proc = self.started()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                workers = child_pids(proc.pid)  # each worker runs in a session (process group) of its own
                proc.kill()
                for pid in workers:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)
                proc.wait(10)
        self._log.close()
        return proc.returncode


def child_pids(parent: int) -> list[int]:
    """The processes whose parent is `parent` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


WORKER_PORTS = {"sdxl": "SDXL_PORT", "wan": "WAN_PORT", "chat": "CHAT_PORT"}


class PodFactory:
    """The one way the tests start a pod: `python -m orchestrator` on free ports with the placeholder
    models, its state, outputs and log under a folder of its own, and (with callbacks=True) a callback
    receiver of its own as CALLBACK_URL. start() waits for /ready unless told not to; close() stops every
    pod still running and closes the receivers. tests/conftest.py serves it as the `start_pod` fixture
    (one per module) and `shared_pod` (one pod for the session's read-only modules)."""

    def __init__(self, tmp_path_factory, placeholder_dir: Path):
        self._tmp = tmp_path_factory
        self._placeholder_dir = placeholder_dir
        self.pods: list[OrchestratorProcess] = []
        self._receivers: list[CallbackReceiver] = []

    def start(self, name: str = "pod", *, workers=("sdxl", "wan", "chat"), callbacks: bool = False,
              test_build: bool = False, ready: bool = True, **settings) -> OrchestratorProcess:
        """A pod running `workers`; `settings` are environment variables (values made strings) over the
        test defaults (tests.support.base_env). test_build: the workers run tests/stuck_engine_app.py's
        step hook (slow and stuck jobs by id prefix), through a sitecustomize.py on PYTHONPATH, since the
        supervisor starts the real command line. The pod carries .env, .tmp, .state_dir, .output_dir,
        .ports ({worker: port}) and .receiver."""
        tmp = self._tmp.mktemp(name)
        if test_build:
            hook = tmp / "hook"
            hook.mkdir()
            (hook / "sitecustomize.py").write_text("from tests.stuck_engine_app import install\n\ninstall()\n")
            settings["PYTHONPATH"] = f"{hook}{os.pathsep}{REPO}"
        receiver = None
        if callbacks:
            receiver = CallbackReceiver()
            self._receivers.append(receiver)
            settings.setdefault("CALLBACK_URL", receiver.url)
        settings.setdefault("STATE_DIR", tmp / "state")
        settings["ENABLED_WORKERS"] = ",".join(workers)
        for port in ("ORCHESTRATOR_PORT", *(WORKER_PORTS[w] for w in workers)):  # free ones unless given
            settings.setdefault(port, free_port())
        full = base_env(tmp, self._placeholder_dir, **settings)
        pod = OrchestratorProcess(full, tmp / "orchestrator.log")
        pod.receiver = receiver
        self.pods.append(pod.start())
        if ready:
            pod.wait_ready()
        return pod

    def close(self) -> None:
        """Stop every pod and close every receiver, even when one stop fails (the first failure is raised
        at the end)."""
        failures: list[BaseException] = []
        for pod in self.pods:
            if pod.proc is not None and pod.proc.poll() is None:
                try:
                    pod.stop()
                except Exception as exc:
                    failures.append(exc)
        for receiver in self._receivers:
            receiver.close()
        if failures:
            raise failures[0]
