"""The fault suite (issue 11): processes killed and stopped mid-job, the callback receiver down far
longer than one delivery window (with a shortened clock) and across a restart of the pod, storage
failing, two processes started on one journal. In every case each accepted job ends in exactly one
delivered terminal callback that says what the files say, and the processes keep serving.

One pod (orchestrator + SDXL, WAN and chat workers on the placeholder profile) serves the module; the
tests run in order and each leaves it serving for the next.

The shortened clock: callbacks retry from CALLBACK_BACKOFF_S=0.02 s, capped at CALLBACK_BACKOFF_MAX_S=1.2 s,
which is the production schedule (1 s doubling to 60 s) 50 times faster. The old delivery window (six
attempts, 31 s) becomes 0.62 s and a 10-minute outage 12 s.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.support import (
    API_KEY,
    CallbackReceiver,
    Client,
    LocalHTTPServer,
    OrchestratorProcess,
    WorkerProcess,
    base_env,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)

CLOCK_SCALE = 50
OUTAGE_S = 600 / CLOCK_SCALE  # a 10-minute outage
SDXL = {"type": "sdxl_image_fast", "prompt": "a red fox", "user_id": "u1",
        "config": {"steps": 1, "width": 32, "height": 32}}
SLOW_SDXL = {**SDXL, "config": {"steps": 20, "width": 64, "height": 64}}


@pytest.fixture(scope="module")
def pod(start_pod):
    """The receiver is the pod's (tests.support.CallbackReceiver: down() answers 503 until up()). The drain
    grace is 20 s: a stopped worker finishes SLOW_SDXL (a second or two on a loaded 2-core machine) well within
    it, and a stop while the receiver is down spends all of it retrying callbacks the receiver refuses (the
    outage test stops the pod once, its workers and then the orchestrator each waiting out the grace)."""
    return start_pod("faults", callbacks=True, CALLBACK_BACKOFF_S=1 / CLOCK_SCALE,
                     CALLBACK_BACKOFF_MAX_S=60 / CLOCK_SCALE, SHUTDOWN_GRACE_S=20, RESTART_BACKOFF_S=0.2)


@pytest.fixture(scope="module")
def receiver(pod):
    return pod.receiver


@pytest.fixture
def serving(pod):
    """The module's pod, started again if an earlier test left it stopped."""
    if pod.proc.poll() is not None:
        restart(pod)
    return pod


def restart(pod: OrchestratorProcess) -> None:
    """Start the orchestrator again on the same ports, storage and state (the same env)."""
    pod.proc = None
    pod.log_path = pod.log_path.with_name(f"orchestrator-{time.monotonic_ns()}.log")
    pod.start()
    pod.wait_ready()


def worker(pod: OrchestratorProcess, name: str) -> Client:
    return Client(pod.workers()[name]["url"], API_KEY)


def files_of(pod: OrchestratorProcess, user: str, job_id: str) -> list[str]:
    folder = pod.output_dir / user / job_id
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def assert_says_what_the_files_say(pod: OrchestratorProcess, callback: dict, user: str = "u1") -> None:
    files = files_of(pod, user, callback["job_id"])
    if callback["status"] == "completed":
        named = sorted(Path(u).name for a in callback["assets"]
                       for u in (a["url"], a["thumbnail_url"], a["provenance_url"]))
        assert named, (callback, files)
        assert named == files, (callback, files)
    else:
        assert not callback["assets"], (callback, files)
        assert not files, (callback, files)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is gone for our purposes
        return fh.read().split(")")[-1].split()[0] != "Z"


def stage_of(client: Client, job_id: str) -> tuple[str, str | None]:
    record = client.get(f"/jobs/{job_id}").json()
    return record.get("status"), (record.get("progress") or {}).get("stage")


# ---- storage failing ----------------------------------------------------------------------------------

def test_local_storage_not_writable_fails_the_job_with_a_reason(serving, receiver):
    pod = serving
    sdxl = worker(pod, "sdxl")
    pod.output_dir.mkdir(parents=True, exist_ok=True)
    (pod.output_dir / "blocked").write_text("a file where the user's folder would go")
    assert sdxl.post("/generate", json={**SDXL, "id": "store-blocked", "user_id": "blocked"}).status_code == 202
    record = sdxl.wait_job("store-blocked", 60)
    assert record["status"] == "failed", record
    assert record["error"]["code"] == "storage_failed", record
    assert str(pod.output_dir) not in record["error"]["message"]  # no server paths in what callers read
    assert [c["status"] for c in receiver.wait_accepted("store-blocked")] == ["failed"]
    assert sdxl.post("/generate", json={**SDXL, "id": "store-after"}).status_code == 202
    assert sdxl.wait_job("store-after", 60)["status"] == "completed"


class FailingStorage(LocalHTTPServer):
    """A Supabase whose storage answers 500 to every upload; its job-callback function answers 200."""

    def __init__(self):
        self.uploads = 0
        self.callbacks: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.startswith("/functions/v1/job-callback"):
                    outer.callbacks.append(json.loads(raw))
                    status, body = 200, b'{"success": true}'
                else:
                    outer.uploads += 1
                    status, body = 500, b'{"statusCode": "500", "error": "internal", "message": "storage down"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_PUT = do_POST

            def log_message(self, *args):
                pass

        super().__init__(Handler)


def test_supabase_storage_answering_500_fails_the_job_with_a_reason(tmp_path, placeholder_dir):
    supabase = FailingStorage()
    env = base_env(tmp_path, placeholder_dir, STORAGE_BACKEND="supabase", SUPABASE_URL=supabase.url,
                   SUPABASE_SERVICE_KEY="service-key", REGISTER_WITH_SUPABASE="false")
    try:
        with WorkerProcess("sdxl", env) as sdxl:
            assert sdxl.client.post("/generate", json={**SDXL, "id": "supa-500"}).status_code == 202
            record = sdxl.client.wait_job("supa-500", 120)
            assert record["status"] == "failed", record
            assert record["error"]["code"] == "storage_failed", record
            assert supabase.uploads >= 2, "a 500 from storage is retried before the job fails"
            wait_until(lambda: supabase.callbacks, 30, "the callback")
            time.sleep(0.5)
            assert [c["status"] for c in supabase.callbacks] == ["failed"]
            assert sdxl.client.get("/ready").status_code == 200
    finally:
        supabase.close()


# ---- kill -9 of each process type mid-job -----------------------------------------------------------

def test_kill_9_of_the_wan_worker_mid_job(serving, receiver):
    pod = serving
    before = pod.workers()["wan"]
    body = {"type": "video_fast", "prompt": "a boat", "user_id": "u1", "config": {"steps": 30, "frames": 17}}
    job_id = pod.client.post("/jobs", json=body).json()["job_id"]
    wait_until(lambda: stage_of(pod.client, job_id) == ("processing", "generating"), 120, "generating")
    os.kill(before["pid"], signal.SIGKILL)
    record = pod.client.wait_job(job_id, 60)
    assert record["status"] == "failed", record
    assert record["error"]["code"] == "worker_died", record
    callbacks = receiver.wait_accepted(job_id)
    time.sleep(0.5)
    assert [c["status"] for c in receiver.accepted(job_id)] == ["failed"]
    assert_says_what_the_files_say(pod, callbacks[0])
    wait_until(lambda: (w := pod.workers()["wan"])["state"] == "ready" and w["pid"] != before["pid"], 120, "restart")
    again = pod.client.post("/jobs?wait=60", json={**body, "config": {"steps": 1, "frames": 5}})
    assert again.json()["status"] == "completed", again.text


def test_kill_9_of_the_chat_worker_mid_enhancement(serving, receiver):
    pod = serving
    before = pod.workers()["chat"]
    body = {**SDXL, "enhance": {"model": "instruct", "max_tokens": 512, "seed": 1}}
    job_id = pod.client.post("/jobs", json=body).json()["job_id"]
    wait_until(lambda: stage_of(pod.client, job_id)[1] == "enhancing", 60, "enhancing")
    os.kill(before["pid"], signal.SIGKILL)
    record = pod.client.wait_job(job_id, 60)
    assert record["status"] == "failed", record
    assert record["error"]["code"] == "enhancement_failed", record
    receiver.wait_accepted(job_id)
    time.sleep(0.5)
    assert [c["status"] for c in receiver.accepted(job_id)] == ["failed"]
    wait_until(lambda: (w := pod.workers()["chat"])["state"] == "ready" and w["pid"] != before["pid"], 120, "restart")
    again = pod.client.post("/jobs?wait=60", json={**SDXL, "enhance": {"model": "instruct", "max_tokens": 8}})
    assert again.json()["status"] == "completed", again.text


def test_orchestrator_restarted_after_its_workers_finished_reports_what_they_did(serving, receiver):
    pod = serving
    """The orchestrator dies (kill -9) with a routed job running; its worker (SIGTERM from the kernel on
    parent death) finishes the job and exits. Started again, the orchestrator asks the worker what became
    of the job instead of declaring it failed: one callback, and it says what the files say."""
    sdxl_pid = pod.workers()["sdxl"]["pid"]
    routed = pod.client.post("/jobs", json={**SLOW_SDXL, "id": "k9-finished"}).json()["job_id"]
    wait_until(lambda: stage_of(pod.client, routed) == ("processing", "generating"), 120, "generating")
    pod.proc.send_signal(signal.SIGKILL)
    pod.proc.wait(10)
    wait_until(lambda: not pid_alive(sdxl_pid), 120, "the old worker to drain and exit")
    assert files_of(pod, "u1", routed), "the worker did not finish the job while the orchestrator was gone"
    restart(pod)
    callbacks = receiver.wait_accepted(routed, 60)
    time.sleep(1.0)
    assert [c["status"] for c in receiver.accepted(routed)] == ["completed"], receiver.accepted(routed)
    assert_says_what_the_files_say(pod, callbacks[0])
    assert pod.client.get(f"/jobs/{routed}").json()["status"] == "completed"


def test_kill_9_of_the_orchestrator_mid_job_then_an_immediate_restart(serving, receiver):
    pod = serving
    """A routed job running and a direct job queued behind it when the orchestrator dies; the workers
    get SIGTERM from the kernel (parent death) and drain while the orchestrator is started again at
    once on the same ports and storage. Each job ends with exactly one callback, saying what the files say."""
    routed = pod.client.post("/jobs", json={**SLOW_SDXL, "id": "k9-routed"}).json()["job_id"]
    sdxl = worker(pod, "sdxl")
    wait_until(lambda: stage_of(pod.client, routed) == ("processing", "generating"), 120, "generating")
    assert sdxl.post("/generate", json={**SDXL, "id": "k9-direct"}).status_code == 202
    pod.proc.send_signal(signal.SIGKILL)
    pod.proc.wait(10)
    restart(pod)
    for job_id in (routed, "k9-direct"):
        assert receiver.wait_accepted(job_id, 120), f"no callback for {job_id}"
    time.sleep(2.0)  # a second callback (the dead process's view and the new one's) would arrive by now
    for job_id in (routed, "k9-direct"):
        callbacks = receiver.accepted(job_id)
        assert len(callbacks) == 1, (job_id, callbacks)
        assert_says_what_the_files_say(pod, callbacks[0])
    assert pod.client.get(f"/jobs/{routed}").json()["status"] == receiver.accepted(routed)[0]["status"]


# ---- the receiver down for 10 (shortened) minutes, the pod restarted in the middle ---------------------

def test_a_receiver_outage_across_a_pod_restart_loses_no_callback(serving, receiver):
    pod = serving
    receiver.down()
    outage_started = time.monotonic()
    routed = [pod.client.post("/jobs", json={**SDXL, "id": f"out-routed-{i}"}).json()["job_id"] for i in range(2)]
    direct = []
    sdxl = worker(pod, "sdxl")
    for i in range(2):
        assert sdxl.post("/generate", json={**SDXL, "id": f"out-direct-{i}"}).status_code == 202
        direct.append(f"out-direct-{i}")
    for job_id in routed:
        assert pod.client.wait_job(job_id, 60)["status"] == "completed"
    for job_id in direct:
        assert sdxl.wait_job(job_id, 60)["status"] == "completed"
    time.sleep(2 * 0.62)  # twice the old delivery window (six attempts) at this clock
    for client, job_id in [(pod.client, j) for j in routed] + [(sdxl, j) for j in direct]:
        callback = client.get(f"/jobs/{job_id}").json()["callback"]
        assert callback["status"] == "pending", (job_id, callback)
        assert callback["attempts"] >= 3, (job_id, callback)

    # SIGTERM mid-job: a routed job is running when the pod is stopped, then started again.
    running = pod.client.post("/jobs", json={**SLOW_SDXL, "id": "out-running"}).json()["job_id"]
    wait_until(lambda: stage_of(pod.client, running) == ("processing", "generating"), 120, "generating")
    pod.proc.send_signal(signal.SIGTERM)
    assert pod.proc.wait(120) == 0
    restart(pod)
    left = OUTAGE_S - (time.monotonic() - outage_started)
    time.sleep(max(left, 2.0))
    outage = time.monotonic() - outage_started
    receiver.up()
    everything = routed + direct + [running]
    for job_id in everything:
        assert receiver.wait_accepted(job_id, 30), f"{job_id}: lost after a {outage:.0f}s outage"
    time.sleep(1.0)
    for job_id in everything:
        callbacks = receiver.accepted(job_id)
        assert len(callbacks) == 1, (job_id, callbacks)
        assert_says_what_the_files_say(pod, callbacks[0])
    sdxl = worker(pod, "sdxl")
    for client, job_id in [(pod.client, j) for j in routed + [running]] + [(sdxl, j) for j in direct]:
        record = client.get(f"/jobs/{job_id}").json()
        assert record["callback"]["status"] == "delivered", record["callback"]
        assert record["callback"]["attempts"] > 1, record["callback"]


# ---- one live process per journal ---------------------------------------------------------------------

def test_two_processes_never_share_a_journal(tmp_path, placeholder_dir):
    """A worker started on the journal of a live one (an old process still draining) waits until that one
    has exited: it neither fails the job the old process is finishing nor reports it a second time."""
    receiver = CallbackReceiver()
    env = base_env(tmp_path, placeholder_dir, CALLBACK_URL=receiver.url, STATE_DIR=tmp_path / "state")
    old = WorkerProcess("sdxl", env).start()
    new = WorkerProcess("sdxl", env, port=free_port())
    ready: dict = {}
    try:
        assert old.client.post("/generate", json={**SLOW_SDXL, "id": "shared-journal"}).status_code == 202
        wait_until(lambda: stage_of(old.client, "shared-journal") == ("processing", "generating"), 60, "generating")
        starter = threading.Thread(target=lambda: (new.start(180), ready.setdefault("at", time.monotonic())))
        starter.start()
        starter.join(12.0)  # more than a worker needs to start
        assert "at" not in ready, "a second process started on a journal in use"
        asked_to_stop = time.monotonic()  # the old process holds the journal until it exits, after this
        old.stop(signal.SIGTERM)
        starter.join(120)
        assert ready.get("at", 0) >= asked_to_stop, "the new process did not start once the old one had exited"
        callbacks = receiver.wait_for(1, "shared-journal")
        time.sleep(1.0)
        assert len(receiver.bodies("shared-journal")) == 1, receiver.bodies("shared-journal")
        assert new.client.get("/jobs/shared-journal").json()["status"] == callbacks[0]["status"]
    finally:
        new.stop()
        old.stop()
        receiver.close()
