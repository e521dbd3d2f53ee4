"""Fetching caller-supplied reference images, restricted: scheme, address, size, time, content.

One function for every worker (SDXL img2img, WAN reference frames). Any failure raises JobFailed
with a reason; a reference that cannot be used never turns into a text-only job.

The URL is read by one parser (`parse_reference_url`), strict enough that no other parser can read
it differently: ASCII only, no backslash, whitespace or user info, a host that is a DNS name or an IP
literal. The host is resolved once; every address it resolves to must be public; the connection goes
to one of those addresses, with the Host header (and TLS server name) set from the parsed host, so
a second resolution (DNS rebinding) never happens. Each redirect is parsed and checked the same way.
The whole fetch has one deadline, FETCH_TIMEOUT_S, held on every read (a server dripping bytes is cut
at the deadline) and a cancel stops it within a read.
"""
from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin

import certifi
import urllib3
from PIL import Image, UnidentifiedImageError
from urllib3.connection import HTTPConnection, HTTPSConnection

from common.errors import REFERENCE_FETCH_FAILED, REFERENCE_INVALID, REFERENCE_REFUSED, JobCancelled, JobFailed
from configuration.settings import Settings

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
MAX_PIXELS = 64 * 1024 * 1024
MAX_URL_CHARS = 8192
CONNECT_TIMEOUT_S = 5.0
READ_CHUNK = 64 * 1024
WATCH_INTERVAL_S = 0.05


class FetchRefused(JobFailed):
    code = REFERENCE_REFUSED


class FetchFailed(JobFailed):
    code = REFERENCE_FETCH_FAILED


class InvalidImage(JobFailed):
    code = REFERENCE_INVALID


# ---- the one URL parser ------------------------------------------------------------------------------

_URL_CHARS = re.compile(r"[!#$%&'()*+,\-./0-9:;=?@A-Z\[\]_a-z~]*")   # RFC 3986 characters; no \ or space
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True)
class ReferenceUrl:
    scheme: str        # "http" or "https"
    host: str          # DNS name (lower case) or IP literal (no brackets)
    port: int
    target: str        # path and query, as sent in the request line ("/" when empty)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.target}"


def parse_reference_url(url: str) -> ReferenceUrl:
    """The parts of an http(s) reference URL, or FetchRefused saying what is wrong with it."""
    if len(url) > MAX_URL_CHARS:
        raise FetchRefused(f"reference URL is longer than {MAX_URL_CHARS} characters")
    if not url.isascii() or not _URL_CHARS.fullmatch(url):
        raise FetchRefused("reference URL may contain only URL characters (percent-encode anything else; "
                           "no spaces, backslashes or non-ASCII text)")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        raise FetchRefused(f"reference URL scheme {scheme[:10]!r} is not allowed (http, https or data:image)")
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, target = rest[:end], rest[end:].partition("#")[0]
    if "@" in authority:
        raise FetchRefused("reference URL may not carry user information (user:password@)")
    if authority.startswith("["):
        literal, bracket, port_text = authority[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise FetchRefused("reference URL has a malformed IPv6 host")
        port_text = port_text[1:]
        try:
            host = str(ipaddress.IPv6Address(literal))
        except ValueError:
            raise FetchRefused("reference URL has a malformed IPv6 host") from None
    else:
        host, _, port_text = authority.partition(":")
        host = host.lower()
        if host.endswith("."):  # a fully qualified name: example.com.
            host = host[:-1]
        if not host:
            raise FetchRefused("reference URL has no host")
        if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in host.split(".")):
            raise FetchRefused("reference URL host is not a valid DNS name or IP address")
    default = 443 if scheme == "https" else 80
    if ":" in authority.rpartition("]")[2] and not port_text:
        raise FetchRefused("reference URL has an empty port")
    if port_text and (not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536):
        raise FetchRefused("reference URL port must be a number from 1 to 65535")
    if target and not target.startswith(("/", "?")):
        raise FetchRefused("reference URL path must start with /")
    if target.startswith("?"):
        target = "/" + target
    return ReferenceUrl(scheme, host, int(port_text) if port_text else default, target or "/")


def check_reference_url(url: str) -> None:
    """What can be checked at submission (a 400 there rather than a failed job): data: URLs are left to
    the fetch (size and content), http(s) URLs must parse."""
    if not url.startswith("data:"):
        parse_reference_url(url)


# ---- addresses ---------------------------------------------------------------------------------------

def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries and routes to: mapped (::ffff:a.b.c.d), 6to4 (2002:AABB:CCDD::)
    or Teredo's client."""
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    return None


def address_allowed(address: str, allow_private: bool) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return address_allowed(str(embedded), allow_private)
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return False
    if ip.is_loopback or ip.is_private or ip.is_link_local:
        return allow_private
    return ip.is_global


def resolve(target: ReferenceUrl, allow_private: bool) -> list[str]:
    """Every address the host resolves to, once; FetchRefused unless all of them are allowed."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchFailed(f"reference host {target.host!r} does not resolve: "
                          f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise FetchFailed(f"reference host {target.host!r} does not resolve")
    for address in addresses:
        if not address_allowed(address, allow_private):
            raise FetchRefused(f"reference host {target.host!r} resolves to a non-public address")
    return addresses


# ---- fetching ----------------------------------------------------------------------------------------

def _decode(data: bytes, source: str) -> Image.Image:
    try:
        probe = Image.open(io.BytesIO(data))
        if probe.width * probe.height > MAX_PIXELS:
            raise InvalidImage(f"reference image from {source} is too large ({probe.width}x{probe.height})")
        probe.verify()
        image = Image.open(io.BytesIO(data))
        image.load()
    except InvalidImage:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"reference from {source} is not a decodable image: {type(exc).__name__}") from None
    return image.convert("RGB")


def _data_url(url: str, max_bytes: int) -> bytes:
    header, _, payload = url.partition(",")
    if not header.startswith("data:image/") or not header.endswith(";base64"):
        raise FetchRefused("data URLs must be data:image/<type>;base64,...")
    if len(payload) * 3 // 4 > max_bytes:
        raise FetchRefused(f"reference image exceeds the {max_bytes} byte cap")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage("data URL is not valid base64") from None


class _Fetch:
    """One fetch's deadline and cancellation, enforced by a watcher that shuts the socket down."""

    def __init__(self, settings: Settings, cancelled: threading.Event | None):
        self.timeout_s = settings.fetch_timeout_s
        self.deadline = time.monotonic() + settings.fetch_timeout_s
        self.cancelled = cancelled or threading.Event()
        self.stop_reason: str | None = None

    def remaining(self) -> float:
        self.check()
        return max(0.01, self.deadline - time.monotonic())

    def check(self) -> None:
        if self.cancelled.is_set():
            raise JobCancelled()
        if time.monotonic() >= self.deadline:
            raise FetchFailed(f"fetching the reference took longer than {self.timeout_s:g}s")

    def watch(self, sock: socket.socket) -> threading.Event:
        """Shut `sock` down when the fetch is cancelled or out of time; set the returned event when done."""
        done = threading.Event()

        def watcher() -> None:
            while not done.wait(WATCH_INTERVAL_S):
                if self.cancelled.is_set() or time.monotonic() >= self.deadline:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return

        threading.Thread(target=watcher, name="fetch-watch", daemon=True).start()
        return done


def _connect(target: ReferenceUrl, addresses: list[str], fetch: _Fetch) -> HTTPConnection:
    """A connection to one of the checked addresses (never a new resolution of the name)."""
    last: Exception | None = None
    for address in addresses:
        timeout = min(CONNECT_TIMEOUT_S, fetch.remaining())
        if target.scheme == "https":
            conn: HTTPConnection = HTTPSConnection(address, target.port, timeout=timeout,
                                                   server_hostname=target.host, assert_hostname=target.host,
                                                   cert_reqs="CERT_REQUIRED", ca_certs=certifi.where())
        else:
            conn = HTTPConnection(address, target.port, timeout=timeout)
        try:
            conn.connect()
            return conn
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            conn.close()
            last = exc
    fetch.check()
    raise FetchFailed(f"could not fetch the reference image: could not connect to its host ({type(last).__name__})")


def _get(target: ReferenceUrl, settings: Settings, fetch: _Fetch, max_bytes: int) -> bytes | str:
    """The body of a 200, or the Location of a redirect."""
    addresses = resolve(target, settings.fetch_allow_private)
    conn = _connect(target, addresses, fetch)
    sock = conn.sock  # the response takes it over from the connection
    if sock is None:
        raise RuntimeError("a connected HTTP connection without a socket")
    done = fetch.watch(sock)
    try:
        sock.settimeout(fetch.remaining())
        conn.request("GET", target.target, headers={"Host": target.host_header, "Accept": "image/*",
                                                    "Accept-Encoding": "identity", "Connection": "close",
                                                    "User-Agent": "ourvidz-worker"},
                     preload_content=False, decode_content=False)
        response = conn.getresponse()
        if response.status in (301, 302, 303, 307, 308):
            return response.headers.get("Location", "")
        if response.status != 200:
            raise FetchFailed(f"fetching the reference image answered HTTP {response.status}")
        content_type = response.headers.get("Content-Type", "")
        if content_type and not content_type.startswith(("image/", "application/octet-stream")):
            raise InvalidImage(f"reference URL served {content_type[:60]!r}, not an image")
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise FetchRefused(f"reference image is {declared} bytes, over the {max_bytes} byte cap")
        chunks, size = [], 0
        while True:
            if sock.fileno() != -1:  # closed by the response once the body has been read
                sock.settimeout(fetch.remaining())
            chunk = response.read1(READ_CHUNK)
            fetch.check()  # a chunk that ended because the watcher shut the socket is not data
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise FetchRefused(f"reference image exceeds the {max_bytes} byte cap")
            chunks.append(chunk)
        if declared.isdigit() and size != int(declared):
            raise FetchFailed(f"the reference image ended after {size} of {declared} bytes")
        return b"".join(chunks)
    except (OSError, urllib3.exceptions.HTTPError) as exc:
        fetch.check()
        raise FetchFailed(f"reading the reference image failed: {type(exc).__name__}") from None
    finally:
        done.set()
        conn.close()


def fetch_image(url: str, settings: Settings, cancelled: threading.Event | None = None) -> Image.Image:
    """The reference image at `url` as RGB, or JobFailed saying why not; JobCancelled when `cancelled`
    is set while fetching."""
    max_bytes = int(settings.fetch_max_mb * 1024 * 1024)
    if url.startswith("data:"):
        return _decode(_data_url(url, max_bytes), "data URL")
    fetch = _Fetch(settings, cancelled)
    current = parse_reference_url(url)
    started = time.monotonic()
    log.info("fetching a reference image from %s", current.host)
    for redirects in range(MAX_REDIRECTS + 1):
        result = _get(current, settings, fetch, max_bytes)
        if isinstance(result, bytes):
            image = _decode(result, current.host)
            # The host only: a signed URL's path and query are credentials.
            log.info("reference image from %s: %d bytes, %dx%d, in %.2fs%s", current.host, len(result), *image.size,
                     time.monotonic() - started, f" after {redirects} redirect(s)" if redirects else "",
                     extra={"reference_bytes": len(result), "seconds": round(time.monotonic() - started, 3)})
            return image
        # A redirect: the joined URL is only a candidate string; what is checked and requested is what
        # the one parser reads from it.
        current = parse_reference_url(urljoin(current.url, result))
    raise FetchFailed(f"reference URL redirected more than {MAX_REDIRECTS} times")
