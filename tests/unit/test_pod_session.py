"""The pod's own HTTP sessions (common.http.pod_session) never send on a kept-alive connection the server is about
to close. A server that closes an idle connection while a request is arriving on it resets it ("Connection reset
by peer"), and a POST that met that reset cannot safely be sent again: the orchestrator's calls to its workers
and the tests' clients failed that way on a loaded machine."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from common import http
from common.serve import KEEPALIVE_S

# The second request goes out CLIENT_WAIT_S after the first answer; the server closes the connection
# SERVER_IDLE_S after it, unread requests and all. The 3 s between them is the margin a loaded 2-core machine
# needs for the plain session's request to reach the server before that close.
SERVER_IDLE_S = 4.0
CLIENT_WAIT_S = 1.0
CLIENT_IDLE_S = 0.5   # the pod session's limit in this test (half the server's keep-alive in the pod)


class ClosingServer:
    """Answers `answers` requests on each connection, keeps it open SERVER_IDLE_S, then closes it without
    reading what arrived meanwhile (which makes the kernel reset it), as a keep-alive expiry racing a request
    does."""

    def __init__(self, answers: int = 1):
        self.answers = answers
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket):
        for _ in range(self.answers):
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    conn.close()
                    return
                head += chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
        time.sleep(SERVER_IDLE_S)
        conn.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def server():
    s = ClosingServer()
    yield s
    s.close()


def _twice(session: requests.Session, port: int) -> requests.Response:
    url = f"http://127.0.0.1:{port}/jobs"
    assert session.post(url, json={}, timeout=10).text == "ok"
    time.sleep(CLIENT_WAIT_S)
    return session.post(url, json={}, timeout=10)


def test_a_plain_session_meets_the_reset(server):
    """The failure the pod session avoids, shown on this server: the second POST goes out on the kept-alive
    connection and is reset when the server closes it."""
    with pytest.raises(requests.ConnectionError):
        _twice(requests.Session(), server.port)
    assert server.connections == 1


def test_the_pod_session_opens_a_new_connection_once_one_was_idle_too_long(server, monkeypatch):
    monkeypatch.setattr(http._FreshConnection, "max_idle_s", CLIENT_IDLE_S)
    assert _twice(http.bearer_session("key"), server.port).text == "ok"
    assert server.connections == 2


def test_the_pod_session_reuses_a_connection_used_recently():
    """Within the limit (half the pod's keep-alive) the same connection carries the next request."""
    assert http._FreshConnection.max_idle_s == KEEPALIVE_S / 2
    server = ClosingServer(answers=2)
    try:
        session = http.pod_session()
        url = f"http://127.0.0.1:{server.port}/jobs"
        assert session.get(url, timeout=10).text == "ok"
        assert session.post(url, json={}, timeout=10).text == "ok"
        assert server.connections == 1
    finally:
        server.close()
