"""A real `redis-server` for tests: its own process on a free port, its own directory, never the
shared 6379. Tests that need it FAIL (not skip) on a machine without it: the queue is how the app
sends every image and video job, so a CI that cannot run those tests must say so loudly.

`RedisServer(tls=True)` also serves TLS (a throwaway CA and server certificate made with openssl)
with a password, the way the app's hosted Redis is reached (`rediss://:password@host:port`).
"""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support import free_port

INSTALL_HINT = ("redis-server is not installed: the queue tests need a real Redis (7.x). "
                "Install it with `sudo apt-get install redis-server` (Debian/Ubuntu; the service need not run: "
                "tests start their own on a free port) or `brew install redis` (macOS).")


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if not binary:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return binary


def _make_certificates(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost (openssl CLI, as redis' own test suite does)."""
    if not shutil.which("openssl"):
        pytest.fail("openssl is not installed (needed for the rediss:// tests): `sudo apt-get install openssl`",
                    pytrace=False)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "redis.key", directory / "redis.csr", directory / "redis.crt"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ourvidz-test-ca",
        "-keyout", str(ca_key), "-out", str(ca_crt))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(csr))
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "2", "-extfile", str(ext), "-out", str(crt))
    return {"ca": ca_crt, "cert": crt, "key": key}


class RedisServer:
    """One redis-server process. Data persists across `restart()` (append-only file, fsync always),
    as a hosted Redis keeps it across its own restarts."""

    def __init__(self, tls: bool = False, password: str | None = None):
        self.binary = redis_server_binary()
        self.directory = Path(tempfile.mkdtemp(prefix="ourvidz-redis-"))
        self.port = free_port()
        self.tls = tls
        self.password = password if password is not None else ("test-redis-password" if tls else None)
        self.certificates = _make_certificates(self.directory) if tls else {}
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    @property
    def client_url(self) -> str:
        """`url` plus the query a client needs to trust the test CA (rediss:// only)."""
        if not self.tls:
            return self.url
        return f"{self.url}?ssl_ca_certs={self.certificates['ca']}&ssl_cert_reqs=required"

    def _command(self) -> list[str]:
        command = [self.binary, "--bind", "127.0.0.1", "--dir", str(self.directory), "--save", "",
                   "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no",
                   "--logfile", str(self.directory / "redis.log")]
        if self.password:
            command += ["--requirepass", self.password]
        if self.tls:
            certs = self.certificates
            command += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(certs["cert"]),
                        "--tls-key-file", str(certs["key"]), "--tls-ca-cert-file", str(certs["ca"]),
                        "--tls-auth-clients", "no"]
        else:
            command += ["--port", str(self.port)]
        return command

    def start(self, timeout_s: float = 15) -> RedisServer:
        self.proc = subprocess.Popen(self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}:\n{self.log()}")
            if self._answers():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer within {timeout_s}s:\n{self.log()}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
        except OSError:
            return False
        try:
            return bool(self.client().ping())
        except Exception:  # loading the AOF answers LOADING for a moment
            return False

    def client(self, **kwargs):
        import redis
        return redis.Redis.from_url(self.client_url, socket_timeout=5, **kwargs)

    def log(self) -> str:
        try:
            return (self.directory / "redis.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def restart(self, down_s: float = 0.0, sig: int = signal.SIGKILL) -> None:
        """Stop (SIGKILL by default: nothing flushed on the way out) and start again on the same port
        with the same data, after `down_s` seconds down."""
        self.stop(sig)
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

