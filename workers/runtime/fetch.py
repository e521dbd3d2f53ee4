"""Fetching caller-supplied reference images, restricted: scheme, address, size, time, content.

One function for every worker (SDXL img2img, WAN reference frames). Any failure raises JobFailed
with a reason; a reference that cannot be used never turns into a text-only job.
"""
from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import socket
import time
from urllib.parse import urljoin, urlsplit

import requests
from PIL import Image, UnidentifiedImageError

from configuration.settings import Settings
from common.errors import REFERENCE_FETCH_FAILED, REFERENCE_INVALID, REFERENCE_REFUSED, JobFailed

MAX_REDIRECTS = 3
MAX_PIXELS = 64 * 1024 * 1024


class FetchRefused(JobFailed):
    code = REFERENCE_REFUSED


class FetchFailed(JobFailed):
    code = REFERENCE_FETCH_FAILED


class InvalidImage(JobFailed):
    code = REFERENCE_INVALID


def address_allowed(address: str, allow_private: bool) -> bool:
    ip = ipaddress.ip_address(address)
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return False
    if ip.is_loopback or ip.is_private or ip.is_link_local:
        return allow_private
    return ip.is_global


def check_url(url: str, allow_private: bool) -> None:
    """Refuse anything but http(s) to public addresses (every address the name resolves to)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchRefused(f"reference URL scheme {parts.scheme!r} is not allowed (http, https or data:image)")
    if not parts.hostname:
        raise FetchRefused("reference URL has no host")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise FetchFailed(f"reference host {parts.hostname!r} does not resolve: {exc.strerror}") from None
    for info in infos:
        address = info[4][0]
        if not address_allowed(address, allow_private):
            raise FetchRefused(f"reference host {parts.hostname!r} resolves to a non-public address ({address})")


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


def fetch_image(url: str, settings: Settings) -> Image.Image:
    """The reference image at `url` as RGB, or JobFailed saying why not."""
    max_bytes = int(settings.fetch_max_mb * 1024 * 1024)
    if url.startswith("data:"):
        return _decode(_data_url(url, max_bytes), "data URL")
    deadline = time.monotonic() + settings.fetch_timeout_s
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        check_url(current, settings.fetch_allow_private)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchFailed(f"fetching the reference took longer than {settings.fetch_timeout_s}s")
        try:
            response = requests.get(current, stream=True, allow_redirects=False, timeout=min(remaining, 10.0),
                                    headers={"Accept": "image/*"})
        except requests.RequestException as exc:
            raise FetchFailed(f"could not fetch the reference image: {type(exc).__name__}") from None
        with response:
            if response.is_redirect:
                current = urljoin(current, response.headers.get("Location", ""))
                continue
            if response.status_code != 200:
                raise FetchFailed(f"fetching the reference image answered HTTP {response.status_code}")
            content_type = response.headers.get("Content-Type", "")
            if content_type and not content_type.startswith(("image/", "application/octet-stream")):
                raise InvalidImage(f"reference URL served {content_type!r}, not an image")
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise FetchRefused(f"reference image is {declared} bytes, over the {max_bytes} byte cap")
            chunks, size = [], 0
            try:
                for chunk in response.iter_content(64 * 1024):
                    size += len(chunk)
                    if size > max_bytes:
                        raise FetchRefused(f"reference image exceeds the {max_bytes} byte cap")
                    if time.monotonic() > deadline:
                        raise FetchFailed(f"fetching the reference took longer than {settings.fetch_timeout_s}s")
                    chunks.append(chunk)
            except requests.RequestException as exc:
                raise FetchFailed(f"reading the reference image failed: {type(exc).__name__}") from None
            return _decode(b"".join(chunks), urlsplit(current).hostname or "URL")
    raise FetchFailed(f"reference URL redirected more than {MAX_REDIRECTS} times")
