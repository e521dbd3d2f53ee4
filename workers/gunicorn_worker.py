"""The gunicorn worker class of every worker (workers/gunicorn_conf.py): gunicorn's gthread, except that
a connection gets a thread only once its request's head (request line and headers) has arrived whole.

gthread gives every new connection a thread at once, and that thread waits up to 5 s for the first
bytes and then for the whole head: 32 idle sockets held a worker's 16 threads and made `/health` take
3-5 s or time out (issue 19), and a client sending its headers a byte at a time held a thread for good.
Here the accepting loop (one thread, a selector) reads the head itself, without blocking, up to
HEAD_LIMIT_BYTES and until the connection's deadline (CONNECTION_IDLE_TIMEOUT_S after it was accepted or
its previous response was sent); only then is the connection handed to a thread, which parses the head
from that buffer and reads the body with READ_TIMEOUT_S on every read. An idle or slow connection costs a
file descriptor and a few bytes, never a thread; at most WORKER_CONNECTIONS are open at once."""
from __future__ import annotations

import errno
import selectors
import time
from concurrent import futures
from functools import partial
from typing import Any, cast

from gunicorn.workers.gthread import TConn, ThreadWorker  # type: ignore[import-untyped]  # no stubs for 27.x

from common.serve import CONNECTION_IDLE_TIMEOUT_S, HEAD_LIMIT_BYTES, PROBE_THREADS, READ_TIMEOUT_S, is_probe

_HEAD_END = b"\r\n\r\n"
_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")


class HeadBufferingWorker(ThreadWorker):
    """gthread with the request head read by the accepting loop (see the module's docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._heads: dict[TConn, bytearray] = {}  # connections whose head is still arriving -> what came
        self._probe_pool: futures.ThreadPoolExecutor | None = None
        self.stopped_cleanly = False  # set when the accepting loop has ended on a stop (gunicorn_conf.worker_exit)

    def run(self):
        super().run()
        self.stopped_cleanly = True  # the loop returned: a stop signal or the master gone, not an exception

    def load_wsgi(self):
        """The app, with its `Connection: close` made to count: gunicorn drops hop-by-hop headers an app
        sets (gunicorn/http/wsgi.py, process_headers) and keeps the connection alive. After a 413 or 408 the
        unread rest of a body is still on the socket: it must not be parsed (or drained) as a next request."""
        super().load_wsgi()
        app = cast(Any, self).wsgi  # set by gunicorn's base class, which has no types

        def closing_app(environ, start_response):
            def start(status, headers, exc_info=None):
                if any(k.lower() == "connection" and v.strip().lower() == "close" for k, v in headers):
                    start_response.__self__.force_close()  # gunicorn's Response, whose method this is
                return start_response(status, headers, exc_info)
            return app(environ, start)

        self.wsgi = closing_app

    def init_process(self):
        # before gthread's init_process, which ends in the accepting loop (in the forked process)
        self._probe_pool = futures.ThreadPoolExecutor(PROBE_THREADS, thread_name_prefix="probe")
        super().init_process()

    def enqueue_req(self, conn):
        """A probe (/health, /ready) goes to the probe threads, everything else to gthread's pool."""
        if not getattr(conn, "probe", False) or self._probe_pool is None:
            return super().enqueue_req(conn)
        fs = self._probe_pool.submit(self.handle, conn)
        fs.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    # -- connections waiting for their head (the accepting loop; no thread) --------------------------------
    def accept(self, listener):
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())  # non-blocking
        self._wait_for_head(conn, b"", time.monotonic() + CONNECTION_IDLE_TIMEOUT_S)

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection's next request is arriving: read its head here too."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._wait_for_head(conn, b"", conn.timeout)

    def _wait_for_head(self, conn: TConn, head: bytes, deadline: float) -> None:
        conn.sock.setblocking(False)
        conn.timeout = deadline
        self._heads[conn] = bytearray(head)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_bytes, conn))

    def _on_head_bytes(self, conn: TConn, _sock) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # closed by the client before a whole head arrived
            self._drop(conn)
            return
        head = self._heads[conn]
        head += data
        if _HEAD_END in head:
            self.poller.unregister(conn.sock)
            del self._heads[conn]
            conn.data_ready = True  # gthread's handle() then waits for nothing
            conn.head = bytes(head)
            conn.probe = _is_probe_head(conn.head)
            self.enqueue_req(conn)
        elif len(head) > HEAD_LIMIT_BYTES:
            try:
                conn.sock.send(_TOO_LARGE)
            except OSError:
                pass
            self._drop(conn)

    def _drop(self, conn: TConn) -> None:
        self._heads.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self):
        """Close connections whose head did not arrive by their deadline; a stopping worker also closes
        those that have sent nothing (gthread's own deferred connections are handled by it)."""
        super().murder_pending()
        now = time.monotonic()
        for conn, head in list(self._heads.items()):
            if conn.timeout <= now or (not self.alive and not head):
                self._drop(conn)

    # -- in a thread: the head is buffered, the body is read with a deadline per read ------------------------
    def handle(self, conn):
        head = getattr(conn, "head", None)
        if head is not None:
            conn.head = None
            try:
                conn.sock.setblocking(True)
                conn.init()
            except OSError:
                return False
            conn.parser.unreader.unread(head)
        return super().handle(conn)

    def handle_request(self, req, conn):
        # gthread made the socket blocking without a timeout: a client that stops sending its body (or
        # reading the answer) holds this thread READ_TIMEOUT_S per read at most
        conn.sock.settimeout(READ_TIMEOUT_S)
        return super().handle_request(req, conn)

    def finish_request(self, conn, fs):
        """As gthread's, but a kept-alive connection with part of its next request already read (pipelined)
        waits for the rest of that head here rather than in a thread."""
        try:
            leftover = fs.result() and self.alive and conn.parser.unreader.take_buffered()
        except Exception:
            leftover = b""
        if leftover and _HEAD_END not in leftover:
            self._wait_for_head(conn, leftover, time.monotonic() + CONNECTION_IDLE_TIMEOUT_S)
            return
        if leftover:
            conn.probe = _is_probe_head(leftover)
            conn.parser.unreader.unread(leftover)
        super().finish_request(conn, fs)


def _is_probe_head(head: bytes) -> bool:
    """Whether a request head (its request line) asks for a probe path (common.serve.is_probe)."""
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    return len(parts) == 3 and is_probe(parts[0].decode("latin-1"), parts[1].decode("latin-1"))
