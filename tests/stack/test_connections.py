"""Connection exhaustion and bodies (issue 19), against a running pod (the orchestrator and an SDXL worker,
real processes on free ports): hundreds of idle sockets, clients dripping their headers and requests
waiting with `?wait=` leave `/health`, `/ready` and new jobs answering on both servers (95 % of probes
within a second, none near the old 3 s stalls); over-cap chunked bodies answer 413 like over-cap sized ones.

The load is loopback only and bounded: a fixed number of sockets (re-opened when the server closes an
idle one, as an attacker would), a fixed window, every socket closed and every waiting job cancelled at
the end. The limits it exercises are in common/serve.py and docs/OPERATIONS.md ("Connections")."""
from __future__ import annotations

import multiprocessing
import select
import socket
import threading
import time

import pytest
import requests

from common.serve import CONNECTION_IDLE_TIMEOUT_S, READ_TIMEOUT_S
from tests.support import API_KEY

pytestmark = pytest.mark.timeout(420)

AUTH = {"Authorization": f"Bearer {API_KEY}"}
SDXL = {"type": "sdxl_image_fast", "prompt": "a red fox", "config": {"steps": 1, "width": 32, "height": 32}}
# What "answers" means here: each probe's whole round trip, on a loaded 2-core machine. The failure this
# guards against took 3-5 s or timed out (issue 19); a healthy answer takes milliseconds. The figure
# (1 s) holds for 95 % of the probes; one probe may exceed it on a loaded CI machine (CI once saw 1.042 s on
# the orchestrator while 150 waits, 320 sockets and a job shared its 2 cores), but none may reach the
# failure's 3 s.
ANSWER_S = 1.0
ANSWER_CAP_S = 2.5
# Longer than the idle deadline: the servers close idle sockets and the attacker opens them again.
WINDOW_S = CONNECTION_IDLE_TIMEOUT_S + 4


@pytest.fixture(scope="module")
def pod(shared_pod):
    """The session's shared pod (tests/conftest.py): these tests open connections and submit small jobs
    (cancelled again), they never stop or reconfigure it."""
    return shared_pod


class Sockets:
    """`idle` connected sockets that send nothing and `dripping` ones that send part of a request head,
    then a byte now and then; whatever the server closes is opened again, until close()."""

    def __init__(self, port: int, idle: int, dripping: int = 0):
        self.port = port
        self.idle: list[socket.socket] = []
        self.dripping: list[socket.socket] = []
        self.reopened = 0
        self._stop = threading.Event()
        for _ in range(idle):
            self.idle.append(self._open())
        for _ in range(dripping):
            self.dripping.append(self._open(drip=True))
        self._thread = threading.Thread(target=self._keep, daemon=True)
        self._thread.start()

    def _open(self, drip: bool = False) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        if drip:
            s.sendall(b"POST /jobs HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        return s

    def _keep(self) -> None:
        while not self._stop.wait(0.5):
            for group, drip in ((self.idle, False), (self.dripping, True)):
                poller = select.poll()  # not select(): descriptors past 1024 are likely here
                by_fd = {s.fileno(): s for s in group}
                for fd in by_fd:
                    poller.register(fd, select.POLLIN)
                for fd, _event in poller.poll(0):  # readable with nothing to read: the server closed it
                    s = by_fd[fd]
                    try:
                        closed = s.recv(1024) == b""
                    except OSError:
                        closed = True
                    if closed and not self._stop.is_set():
                        s.close()
                        group[group.index(s)] = self._open(drip)
                        self.reopened += 1
                for s in group if drip else ():
                    try:
                        s.send(b"x")
                    except OSError:
                        pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for s in self.idle + self.dripping:
            s.close()


def waiting_requests(url: str, count: int, answers) -> None:
    """`count` `POST /jobs?wait=120` at once (in a process of its own: the probes' timings measure the
    server, not this test's threads); each answer's status (or exception name) goes into `answers`."""
    def wait_job(i: int) -> None:
        try:
            r = requests.post(url + "/jobs?wait=120", json={**SDXL, "id": f"conn-wait-{i}"}, headers=AUTH,
                              timeout=180)
            answers[i] = r.status_code
        except requests.RequestException as exc:
            answers[i] = type(exc).__name__

    threads = [threading.Thread(target=wait_job, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(200)


def probe_for(url: str, seconds: float, paths=("/health", "/ready")) -> dict[str, list[float]]:
    """Each path every 0.2 s for `seconds`: the round trip of each (a failed one counts as infinite)."""
    times: dict[str, list[float]] = {p: [] for p in paths}
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        for path in paths:
            started = time.monotonic()
            try:
                ok = requests.get(url + path, timeout=5).status_code == 200
            except requests.RequestException:
                ok = False
            times[path].append(time.monotonic() - started if ok else float("inf"))
        time.sleep(0.2)
    return times


def slowest(times: dict[str, list[float]]) -> dict[str, float]:
    return {path: round(max(values), 3) for path, values in times.items()}


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def assert_answering(times: dict[str, list[float]]) -> None:
    """Every probe under ANSWER_CAP_S (none timed out or stalled as the failure did) and the 95th percentile of
    each path under ANSWER_S."""
    for path, values in times.items():
        assert max(values) < ANSWER_CAP_S, (path, slowest(times))
        assert p95(values) < ANSWER_S, (path, round(p95(values), 3), slowest(times))


def test_300_idle_sockets_and_150_waiting_requests_leave_the_orchestrator_answering(pod):
    """Issue 19: about 100 idle connections exhausted waitress (connection_limit 100, idle sockets kept
    120 s): /health, /jobs and the ops page timed out, and ~100 `POST /jobs?wait=` starved it."""
    warm = pod.client.post("/jobs?wait=120", json={**SDXL, "id": "conn-warm"})  # a pod in service, model loaded
    assert warm.status_code == 200, warm.text
    assert warm.json()["status"] == "completed", warm.text
    context = multiprocessing.get_context("spawn")
    answers = context.Manager().dict()
    sockets = Sockets(pod.port, idle=300, dripping=20)
    waiting = context.Process(target=waiting_requests, args=(pod.url, 150, answers))
    try:
        waiting.start()
        times = probe_for(pod.url, WINDOW_S)
        started = time.monotonic()
        submitted = pod.client.post("/jobs", json={**SDXL, "id": "conn-new"}, timeout=60)
        submit_s = time.monotonic() - started
        ops = pod.client.get("/ops/state", timeout=10)
    finally:
        for i in range(150):  # end the waits: the jobs still queued are cancelled
            requests.post(f"{pod.url}/jobs/conn-wait-{i}/cancel", headers=AUTH, timeout=30)
        requests.post(f"{pod.url}/jobs/conn-new/cancel", headers=AUTH, timeout=30)
        waiting.join(120)
        sockets.close()
    print(f"orchestrator: slowest {slowest(times)} over {len(times['/health'])} probes; new job answered in "
          f"{submit_s:.3f}s; idle sockets re-opened {sockets.reopened} times")
    assert_answering(times)
    # A submission is checked against the worker (`?dry_run=1`) before it is answered, and the worker is busy
    # running jobs and answering the router's polls of 150 queued ones: answered, but not in milliseconds.
    assert submitted.status_code == 202, (submitted.status_code, submitted.text)
    assert ops.status_code == 200
    assert sockets.reopened >= 300, "the idle sockets were never closed by the server"
    # every waiting request was answered: the record (200) or, past the threads `?wait` may hold, 202
    assert len(answers) == 150, dict(answers)
    assert set(answers.values()) <= {200, 202}, dict(answers)


def test_100_idle_sockets_and_dripping_heads_leave_a_worker_answering(pod):
    """Issue 19: 32 idle sockets made a gunicorn worker's /health take 3-5 s or time out (gthread gave
    each new connection a thread, waiting 5 s for its first bytes)."""
    url = f"http://127.0.0.1:{pod.ports['sdxl']}"
    sockets = Sockets(pod.ports["sdxl"], idle=100, dripping=50)
    try:
        times = probe_for(url, WINDOW_S)
        started = time.monotonic()
        job = requests.post(url + "/generate?wait=120", json={**SDXL, "id": "conn-worker-job"}, headers=AUTH,
                            timeout=180)
        job_s = time.monotonic() - started
    finally:
        sockets.close()
    print(f"sdxl worker: slowest {slowest(times)} over {len(times['/health'])} probes; a job took {job_s:.2f}s; "
          f"idle sockets re-opened {sockets.reopened} times")
    assert_answering(times)
    assert job.status_code == 200, job.text
    assert job.json()["status"] == "completed", job.text
    assert sockets.reopened >= 100, "the idle sockets were never closed by the worker"


def test_a_head_past_the_limit_is_431_and_pipelined_requests_are_answered_in_order(pod):
    with socket.create_connection(("127.0.0.1", pod.ports["sdxl"]), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 70_000)
        assert s.recv(100).startswith(b"HTTP/1.1 431")
    with socket.create_connection(("127.0.0.1", pod.ports["sdxl"]), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /ready HTTP/1.1\r\nHo")
        time.sleep(0.5)  # the second head arrives in two parts
        s.sendall(b"st: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200") == 2, data[:300]


def chunks(total: int, size: int = 1 << 20):
    yield b'{"type": "sdxl_image_fast", "prompt": "'
    sent = 0
    while sent < total:
        yield b"a" * size
        sent += size
    yield b'"}'


@pytest.mark.parametrize("process", ["sdxl", "orchestrator"])
def test_an_over_cap_chunked_body_is_413_like_a_sized_one(pod, process):
    """Issue 19 (low): over-cap chunked bodies on the workers answered 400 invalid_json (werkzeug cut the
    stream at the cap and the app parsed the cut)."""
    url, route = (f"http://127.0.0.1:{pod.ports['sdxl']}", "/generate") if process == "sdxl" else (pod.url, "/jobs")
    over = requests.post(url + route, data=chunks(11 << 20), headers=AUTH, timeout=60)  # MAX_BODY_MB is 10
    assert over.status_code == 413, over.text[:300]
    assert over.json()["error"]["code"] == "body_too_large", over.text[:300]
    sized = requests.post(url + route, data=b"".join(chunks(11 << 20)), headers=AUTH, timeout=60)
    assert sized.status_code == 413, sized.text[:300]
    assert sized.json()["error"]["code"] == "body_too_large", sized.text[:300]
    if process == "sdxl":  # gunicorn reads bodies as the app does: what was not drained ends the connection
        assert over.headers.get("Connection") == "close", (over.headers, sized.headers)
        assert sized.headers.get("Connection") == "close", (over.headers, sized.headers)
    # under the cap, a chunked body is read whole and validated as any other
    under = requests.post(url + route, data=chunks(2 << 20), headers=AUTH, timeout=60)
    assert under.status_code == 400, under.text[:300]
    assert under.json()["error"]["code"] == "validation_error"
    assert any(d["path"] == "/prompt" for d in under.json()["error"]["details"]), under.text[:300]


def test_a_body_that_stops_arriving_is_408_after_the_read_timeout(pod):
    """A worker thread reads a body with READ_TIMEOUT_S on each read: a client that stops sending holds it
    that long, then gets 408 (not a 500, not a thread held for good)."""
    with socket.create_connection(("127.0.0.1", pod.ports["sdxl"]), timeout=READ_TIMEOUT_S + 30) as s:
        s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode() +
                  b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"type\": ")
        started = time.monotonic()
        answer = s.recv(4096)
        waited = time.monotonic() - started
        while b"}" not in answer:  # the head and the body may come in separate segments; the server closes
            more = s.recv(4096)
            if not more:
                break
            answer += more
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"Connection: close" in answer, answer[:300]  # the unread rest of the body is never a next request
    assert b"stopped arriving" in answer
    assert READ_TIMEOUT_S - 1 < waited < READ_TIMEOUT_S + 20, waited
