"""How a worker process is started: the gunicorn command line, used by the orchestrator and tests;
`python -m common.serve <worker>` runs one worker alone (in the foreground, as the orchestrator would)."""
from __future__ import annotations

import resource
import sys

from configuration.settings import Settings

# Connections (docs/OPERATIONS.md, "Connections"). An idle or slow connection holds no thread on either
# server: waitress (the orchestrator) reads whole requests in its one asyncore loop, and the workers'
# gunicorn worker class (workers/gunicorn_worker.py) reads each request's head in its accepting loop.
# So the limits are file descriptors, well above the thread counts, and short idle deadlines.
CONNECTION_LIMIT = 1000           # open connections per process (waitress connection_limit, gunicorn
                                  # worker_connections); past it new ones wait in the listen backlog
CONNECTION_IDLE_TIMEOUT_S = 10    # a new connection's head must arrive within this; an idle one is closed
KEEPALIVE_S = 5                   # a kept-alive worker connection idle this long is closed
HEAD_LIMIT_BYTES = 64 * 1024      # a request head (line and headers) past this: 431, closed
READ_TIMEOUT_S = 10               # a worker thread waits at most this long on one read of a body
FILES_MARGIN = 256                # descriptors besides connections (models, journals, logs, Redis, pipes)
# Probes have threads of their own on both servers: a load balancer's /health and /ready are answered
# even while every request thread waits (`?wait=`, a slow worker behind a submission, a slow body).
PROBE_PATHS = ("/health", "/ready")
PROBE_THREADS = 4


def is_probe(method: str, path: str) -> bool:
    """A health or readiness probe: GET or HEAD of a probe path (the query does not matter)."""
    return method in ("GET", "HEAD") and path.split("?", 1)[0] in PROBE_PATHS


def ensure_open_files_limit(connections: int = CONNECTION_LIMIT) -> int:
    """Raise this process's soft limit on open files to cover `connections` plus a margin (up to the hard
    limit; children inherit it). Returns the limit now in force; RuntimeError when the hard limit is
    below what is needed (the server would fail with EMFILE under load rather than refuse connections)."""
    needed = connections + FILES_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise RuntimeError(f"the open-files limit is {soft} (hard {hard}); {needed} are needed for "
                               f"{connections} connections: raise it (ulimit -n) before starting")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        soft = needed
    return soft


# gunicorn's own wiring syntax names the worker side's config module and app factory by string (common/ may not
# import workers/): tests/unit/test_architecture.py resolves both and allows exactly these two upper-layer strings.
WORKER_CONFIG = "python:workers.gunicorn_conf"
WORKER_APP = "workers.http.app:serve_app"


def gunicorn_command(worker: str, settings: Settings, port: int | None = None) -> list[str]:
    port = port or settings.port_of(worker)
    return [sys.executable, "-m", "gunicorn", "--config", WORKER_CONFIG,
            "--bind", f"{settings.bind_host}:{port}", "--name", f"ourvidz-{worker}",
            f"{WORKER_APP}('{worker}')"]


if __name__ == "__main__":
    import os
    name = sys.argv[1]
    command = gunicorn_command(name, Settings.from_env())
    os.execv(command[0], command)  # noqa: S606 (exec of the gunicorn argv built above, no shell)
