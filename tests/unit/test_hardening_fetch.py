"""Issue 11, items 1, 2 and 10: caller-supplied reference URLs cannot reach what the address check
refused (one URL parser for the check and the request, the checked address is the one connected to),
a dripping server is cut at the total deadline, and odd hosts are refusals rather than crashes.

Each test reproduces one finding of the attack run against the code before the fix."""
from __future__ import annotations

import io
import socket
import time

import pytest
from PIL import Image

from common.errors import JobCancelled, JobFailed
from configuration.settings import Settings
from tests.support import StaticServer
from workers.runtime.fetch import FetchFailed, FetchRefused, address_allowed, fetch_image


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), (200, 10, 10)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def loopback_image():
    server = StaticServer({"/ok.png": (200, "image/png", _png())})
    yield server
    server.close()


class DripServer:
    """A reference host that answers 200 with a large Content-Length, then sends one byte every
    `interval_s` for `duration_s` (or until the client goes away)."""

    def __init__(self, total_bytes: int, interval_s: float, duration_s: float):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        drip = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                drip.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(total_bytes))
                self.end_headers()
                ends = time.monotonic() + duration_s
                try:
                    while time.monotonic() < ends and not drip.closed:
                        self.wfile.write(b"\x89")
                        self.wfile.flush()
                        time.sleep(interval_s)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.closed = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.closed = True
        self.server.shutdown()
        self.server.server_close()


PUBLIC_ONLY = Settings(fetch_allow_private=False, fetch_timeout_s=3)


@pytest.mark.parametrize("template", [
    "http://127.0.0.1:{port}\\@1.1.1.1/ok.png",  # the attack: urlsplit saw 1.1.1.1, urllib3 went to 127.0.0.1
    "http://127.0.0.1:{port}\\\\@1.1.1.1/ok.png",
    "http://1.1.1.1\\@127.0.0.1:{port}/ok.png",
    "http://127.0.0.1:{port}/\\@1.1.1.1/ok.png",
    "http://127.0.0.1:{port}#@1.1.1.1/ok.png",
    "http://127.0.0.1:{port}?@1.1.1.1/ok.png",
    "http://1.1.1.1 @127.0.0.1:{port}/ok.png",
    "http://127.0.0.1:{port}\t@1.1.1.1/ok.png",
])
def test_parser_differences_cannot_reach_a_refused_address(loopback_image, template):
    port = loopback_image.url.rsplit(":", 1)[1]
    with pytest.raises(JobFailed):
        fetch_image(template.format(port=port), PUBLIC_ONLY)
    assert loopback_image.requested == [], "the loopback server was reached"


def test_the_checked_address_is_the_one_connected_to(monkeypatch, loopback_image):
    """DNS rebinding: the name answers a public address to the check and loopback to the client. The
    fetch must connect to the address it checked (resolving once), never to a later answer."""
    port = int(loopback_image.url.rsplit(":", 1)[1])
    real_getaddrinfo = socket.getaddrinfo
    answers: list[str] = []

    def rebinding_resolver(host, *args, **kwargs):
        if host == "rebind.example":
            address = "93.184.216.34" if not answers else "127.0.0.1"
            answers.append(address)
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_resolver)
    with pytest.raises(JobFailed):
        fetch_image(f"http://rebind.example:{port}/ok.png", Settings(fetch_allow_private=False, fetch_timeout_s=2))
    assert loopback_image.requested == [], "the client resolved again and reached loopback"
    assert answers == ["93.184.216.34"], f"the name was resolved {len(answers)} times"


@pytest.mark.parametrize("address", [
    "2002:7f00:1::1",          # 6to4 of 127.0.0.1
    "2002:7f00:0001:0:0:0:0:1",
    "2002:a9fe:a9fe::1",       # 6to4 of 169.254.169.254 (cloud metadata)
    "2002:c0a8:0101::1",       # 6to4 of 192.168.1.1
    "2002:0a00:0001::1",       # 6to4 of 10.0.0.1
    "2002:0000:0000::1",       # 6to4 of 0.0.0.0
])
def test_6to4_addresses_embedding_private_ipv4_are_refused(address):
    assert address_allowed(address, allow_private=False) is False


def test_6to4_of_a_public_ipv4_stays_allowed():
    assert address_allowed("2002:0808:0808::1", allow_private=False) is True  # 8.8.8.8


@pytest.mark.parametrize("url", [
    "http://a..b/x.png",                 # empty IDNA label
    "http://\u2028x.example/x.png",      # a line separator in the host
    "http://exa\udcffmple.com/x.png",    # a lone surrogate in the host
    "http://[::1/x.png",                 # unterminated IPv6 literal
    "http://x.example:99999/x.png",      # port out of range
    "http://x.example:-1/x.png",
    "http://" + "a" * 300 + ".example/x.png",
])
def test_odd_hosts_are_refusals_not_internal_errors(url):
    with pytest.raises(FetchRefused):
        fetch_image(url, PUBLIC_ONLY)


def test_a_dripping_reference_is_cut_at_the_total_deadline():
    """One byte every 0.3 s never trips a per-read timeout; the total deadline must still hold."""
    server = DripServer(total_bytes=100_000, interval_s=0.3, duration_s=12)
    try:
        started = time.monotonic()
        with pytest.raises(FetchFailed, match="longer than"):
            fetch_image(server.url + "/drip.png", Settings(fetch_allow_private=True, fetch_timeout_s=1.5))
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert elapsed < 1.5 + 1.0, f"the fetch ran {elapsed:.1f}s with FETCH_TIMEOUT_S=1.5"


def test_a_dripping_reference_stops_when_cancelled():
    """Cancellation reaches a fetch in progress (the job's cancel event), within a read."""
    import threading

    server = DripServer(total_bytes=100_000, interval_s=0.3, duration_s=12)
    cancelled = threading.Event()
    threading.Timer(0.5, cancelled.set).start()
    try:
        started = time.monotonic()
        with pytest.raises(JobCancelled):
            fetch_image(server.url + "/drip.png", Settings(fetch_allow_private=True, fetch_timeout_s=10),
                        cancelled=cancelled)
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert elapsed < 1.5, f"the fetch ran {elapsed:.1f}s after a cancel at 0.5s"
