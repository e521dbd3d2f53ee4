"""`python -m orchestrator`: serve the orchestrator (waitress, one process) and run the pod.

SIGTERM or SIGINT (Ctrl-C reaches only this process: each worker runs in its own session): stop taking
jobs, let running ones finish within SHUTDOWN_GRACE_S, stop the workers, exit. The HTTP server keeps
answering until the end, because the workers still finishing jobs report to the memory broker."""
from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

from configuration import ConfigurationError
from configuration.settings import settings_for_command

log = logging.getLogger("orchestrator")

BROKER_THREADS = 32  # lease requests wait here (up to LEASE_TIMEOUT_S each): a few per worker at most
BROKER_CONNECTION_LIMIT = 200  # loopback, the workers' clients only; above its threads like the public port's


def main() -> int:
    settings = settings_for_command()
    if settings is None:
        return 2
    from common.logging import configure_logging
    from common.metrics import configure_metrics
    from common.serve import CONNECTION_LIMIT, ensure_open_files_limit

    configure_logging("orchestrator", settings.log_level, settings.log_format)
    configure_metrics("orchestrator", settings.model_profile)
    from waitress.server import create_server

    from orchestrator.api import create_app
    from orchestrator.broker_api import create_broker_app
    from orchestrator.pod import Pod
    from orchestrator.serving import create_public_server

    if not settings.api_key:
        log.warning("WORKER_API_KEY is not set: serving without authentication on loopback %s only", settings.bind_host)
    try:
        ensure_open_files_limit(CONNECTION_LIMIT + BROKER_CONNECTION_LIMIT)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    try:
        pod = Pod(settings)
    except ConfigurationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        server = create_public_server(create_app(pod), settings.bind_host, settings.orchestrator_port,
                                      settings.orchestrator_threads, settings.max_body_bytes)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.bind_host, settings.orchestrator_port, exc)
        return 1
    threading.Thread(target=server.run, name="http", daemon=True).start()
    # The memory broker: its own loopback port and threads (a worker's lease request never waits for a
    # public thread), bound by the pod before its workers were given its URL and token.
    broker_server = create_server(create_broker_app(pod), sockets=[pod.broker_socket],
                                  threads=BROKER_THREADS, ident="ourvidz-broker",
                                  connection_limit=BROKER_CONNECTION_LIMIT)
    threading.Thread(target=broker_server.run, name="broker-http", daemon=True).start()
    log.info("orchestrator listening on %s:%d; device memory from %s; workers: %s", settings.bind_host,
             settings.orchestrator_port, pod.device.source, ", ".join(pod.supervisors) or "none")

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            log.warning("%s received again; shutdown is already under way", signal.Signals(signum).name)
        else:
            log.info("%s received: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    pod.start()
    while not stop.wait(0.5):
        pass
    pod.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
