"""How a worker process is started: the gunicorn command line, used by the orchestrator and tests;
`python -m common.serve <worker>` runs one worker alone (in the foreground, as the orchestrator would)."""
from __future__ import annotations

import sys

from configuration.settings import Settings


def gunicorn_command(worker: str, settings: Settings, port: int | None = None) -> list[str]:
    port = port or settings.port_of(worker)
    return [sys.executable, "-m", "gunicorn", "--config", "python:workers.gunicorn_conf",
            "--bind", f"{settings.bind_host}:{port}", "--name", f"ourvidz-{worker}",
            f"workers.http.app:serve_app('{worker}')"]


if __name__ == "__main__":
    import os
    name = sys.argv[1]
    command = gunicorn_command(name, Settings.from_env())
    os.execv(command[0], command)
