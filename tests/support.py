"""Test support: free ports, a real HTTP callback receiver, worker processes under gunicorn, the
orchestrator as a process."""
from __future__ import annotations

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


class CallbackReceiver:
    """A real HTTP server recording every POST. `fail_first` answers 503 to that many requests."""

    def __init__(self, fail_first: int = 0, status: int = 200):
        self.requests: list[dict] = []
        self.fail_first = fail_first
        self.status = status
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

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/functions/v1/job-callback"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def bodies(self, job_id: str | None = None) -> list[dict]:
        with self._lock:
            return [r["body"] for r in self.requests if job_id is None or (r["body"] or {}).get("job_id") == job_id]

    def wait_for(self, count: int, job_id: str | None = None, timeout_s: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.bodies(job_id)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        return self.bodies(job_id)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class StaticServer:
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

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


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
        self.session = requests.Session()
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"

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
                proc.kill()
                proc.wait(10)
        self._log.close()
        return proc.returncode
