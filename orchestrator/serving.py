"""How the orchestrator's public port is served: waitress, with the connection limits of common/serve.py
and threads of its own for probes.

waitress reads whole requests in its one asyncore loop and hands each complete request to a thread, so
an idle or slow connection costs a file descriptor, not a thread. Its threads serve requests in arrival
order, though: with every thread held (requests waiting with `?wait=`, submissions waiting on a slow
worker) a probe would queue behind them. `ProbeFirstDispatcher` gives GET/HEAD /health and /ready
PROBE_THREADS threads of their own."""
from __future__ import annotations

from typing import TYPE_CHECKING

from waitress.server import BaseWSGIServer, MultiSocketServer, create_server
from waitress.task import Task, ThreadedTaskDispatcher

if TYPE_CHECKING:
    from wsgiref.types import WSGIApplication

from common.serve import CONNECTION_IDLE_TIMEOUT_S, CONNECTION_LIMIT, PROBE_THREADS, is_probe

CLEANUP_INTERVAL_S = 2  # how often waitress closes connections idle past CONNECTION_IDLE_TIMEOUT_S


class ProbeFirstDispatcher(ThreadedTaskDispatcher):
    """waitress's dispatcher (`threads` threads, arrival order) with a second one for probes."""

    def __init__(self, threads: int, probe_threads: int = PROBE_THREADS) -> None:
        super().__init__()
        self.set_thread_count(threads)
        self.probes = ThreadedTaskDispatcher()
        self.probes.set_thread_count(probe_threads)

    def add_task(self, task: Task) -> None:
        # a task is a channel whose first request (parsed whole) is the one to serve next
        requests = getattr(task, "requests", None)
        request = requests[0] if requests else None
        if request is not None and is_probe(request.command or "", request.path or ""):
            self.probes.add_task(task)
        else:
            super().add_task(task)

    def shutdown(self, cancel_pending: bool = True, timeout: int = 5) -> bool:
        self.probes.shutdown(cancel_pending, timeout)
        return super().shutdown(cancel_pending, timeout)


def create_public_server(app: WSGIApplication, host: str, port: int, threads: int,
                         max_body_bytes: int) -> MultiSocketServer | BaseWSGIServer:
    """The public port's server (not yet running; `.run()` serves)."""
    return create_server(app, host=host, port=port, threads=threads, ident="ourvidz-orchestrator",
                         # `_dispatcher` is waitress's way to pass a dispatcher in (pinned: waitress 3.0.2)
                         _dispatcher=ProbeFirstDispatcher(threads),
                         # waitress buffers a body before the app sees it: past the cap the app answers
                         # 413, past this waitress does (no 1 GB default buffer)
                         max_request_body_size=max_body_bytes + 64 * 1024 * 1024,
                         # whole requests are read in waitress's loop, so an idle or slow connection holds
                         # no thread: allow many, close idle ones soon
                         connection_limit=CONNECTION_LIMIT, channel_timeout=CONNECTION_IDLE_TIMEOUT_S,
                         cleanup_interval=CLEANUP_INTERVAL_S)
