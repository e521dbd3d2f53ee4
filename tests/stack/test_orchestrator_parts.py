"""The orchestrator's parts one at a time: supervision with real (cheap) processes, the GPU reading
logic on CPU, routing plans, the broker's HTTP API with the workers' BrokerMemory client, Supabase
registration against a real local receiver, the parent-death signal, and the operator table."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC
from types import SimpleNamespace

import pytest
import requests

from common.errors import MemoryUnavailable
from configuration import requests as request_models
from configuration.requests.common import ValidationFailed
from configuration.requests.orchestrator import default_enhance_model
from configuration.settings import Settings
from orchestrator import device_memory as gpu
from orchestrator.supervisor import WorkerSupervisor, backoff_delay, describe_exit
from tests.support import API_KEY, CallbackReceiver, free_port, poll_until

pytestmark = pytest.mark.timeout(120)
MB = 1024 * 1024


# ---- supervision -----------------------------------------------------------------------------------------

def test_backoff_doubles_and_is_capped():
    assert [backoff_delay(n, 0.5, 3.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "exited with status 3"


def _ready_server_script(port: int, die_after_s: float | None) -> list[str]:
    """A real process serving GET /ready (and optionally dying on its own)."""
    code = textwrap.dedent(f"""
        import http.server, threading, os, time
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
            def log_message(self, *a): pass
        server = http.server.ThreadingHTTPServer(("127.0.0.1", {port}), H)
        server.allow_reuse_address = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        if {die_after_s!r} is not None:
            time.sleep({die_after_s!r}); os._exit(7)
        time.sleep(600)
    """)
    return [sys.executable, "-c", code]


def _settings(**kw) -> Settings:
    port = free_port()
    base = dict(sdxl_port=port, restart_limit=2, restart_backoff_s=0.05, restart_backoff_max_s=0.2,
                worker_ready_timeout_s=20, restart_reset_s=600)
    base.update(kw)
    return Settings(**base)


def test_supervisor_restarts_with_backoff_then_marks_failed():
    settings = _settings()
    events = []
    sup = WorkerSupervisor("sdxl", settings, dict(os.environ), command=[sys.executable, "-c",
                                                                        "import sys; sys.exit(3)"],
                           on_exit=lambda name, reason, unexpected: events.append((name, reason, unexpected)))
    sup.start()
    assert poll_until(lambda: sup.state == "failed", 20)
    assert sup.join(5)
    assert sup.restarts == 2
    assert sup.failures == 3
    assert sup.incarnation == 3
    assert events == [("sdxl", "the sdxl worker process exited with status 3", True)] * 3
    time.sleep(0.3)
    assert sup.state == "failed"
    assert sup.incarnation == 3


def test_supervisor_ready_by_polling_then_restarts_a_dead_worker():
    settings = _settings(restart_limit=5)
    ready, exits = [], []
    sup = WorkerSupervisor("sdxl", settings, dict(os.environ), command=_ready_server_script(settings.sdxl_port, 0.8),
                           on_ready=ready.append, on_exit=lambda *a: exits.append(a))
    sup.start()
    assert poll_until(lambda: sup.state == "ready", 20)
    first_pid = sup.pid
    assert os.getsid(first_pid) == first_pid  # its own session
    assert poll_until(lambda: sup.restarts == 1 and sup.state == "ready" and sup.pid != first_pid, 20)
    assert ready == ["sdxl", "sdxl"]
    assert exits[0][1].endswith("exited with status 7")
    sup.stop()
    assert sup.join(10)
    assert sup.state == "stopped"
    assert exits[-1][2] is False  # a requested stop is not a death


def test_supervisor_stop_terminates_the_whole_group():
    settings = _settings()
    # a parent that leaves a child behind in its process group, like a gunicorn master with its worker
    script = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
              "time.sleep(600)")
    sup = WorkerSupervisor("sdxl", settings, dict(os.environ), command=[sys.executable, "-c", script],
                           ready_url=f"http://127.0.0.1:{free_port()}/ready")
    sup.start()
    assert poll_until(lambda: sup.pid is not None, 20)
    pgid = sup.pid
    assert poll_until(lambda: len(_group(pgid)) == 2, 20)
    os.kill(pgid, signal.SIGKILL)  # the parent dies; the supervisor reaps the child left in its group
    assert poll_until(lambda: sup.restarts == 1 or sup.state == "restarting", 20)
    assert poll_until(lambda: not _group(pgid), 10)
    sup.stop()
    assert sup.join(10)
    assert sup.pid is None


def _group(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=,stat=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if line.split() and not line.split()[1].startswith("Z")]


def test_launch_ties_the_worker_to_the_orchestrator():
    # parent (stands for the orchestrator) -> launch -> sleeper; killing the parent must end the sleeper
    code = textwrap.dedent("""
        import os, subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-m", "orchestrator.launch", str(os.getpid()),
                              sys.executable, "-c", "import time; time.sleep(600)"])
        print(p.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    child = int(parent.stdout.readline())
    # wait until launch has armed the signal and exec'd the worker's command
    assert poll_until(lambda: b"time.sleep(600)" in open(f"/proc/{child}/cmdline", "rb").read(), 20)
    assert _alive(child)
    parent.kill()
    parent.wait()
    assert poll_until(lambda: not _alive(child), 10)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ---- what the broker knows of the device ----------------------------------------------------------------------

class FakeNVML:
    """Stands in for pynvml's functions (the binding is not torch; its logic is what is tested)."""

    def __init__(self):
        self.asked = []

    def nvmlDeviceGetHandleByIndex(self, i):
        self.asked.append(("index", i))
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self.asked.append(("uuid", uuid))
        return uuid

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetPciInfo(self, handle):
        return SimpleNamespace(busId=b"00000000:3B:00.0")

    def nvmlDeviceGetMigMode(self, handle):
        return (0, 0)

    def nvmlDeviceGetUUID(self, handle):
        return "GPU-only"

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=80 * 1024**3, used=3 * 1024**3, free=77 * 1024**3)


def test_gpu_device_choice_and_reading_logic():
    nvml = FakeNVML()
    assert gpu.resolve_device_uuid(nvml, "GPU-5a1f, GPU-77") == "GPU-5a1f"
    assert gpu.resolve_device_uuid(nvml, None) == "GPU-only"  # more cases: tests/app/test_gpu_suite_defects.py
    device = gpu.DeviceMemory(Settings(), nvml=nvml, nvidia_present=True)
    reading = device.read()
    assert (reading.kind, reading.source, reading.total_bytes, reading.used_bytes) == ("cuda", "nvml", 80 * 1024**3,
                                                                                       3 * 1024**3)
    assert gpu.read_nvml(nvml, "MIG-abc") == (80 * 1024**3, 3 * 1024**3)
    assert nvml.asked[-1] == ("uuid", "MIG-abc")


def test_without_a_gpu_the_budget_is_the_capacity():
    reading = gpu.DeviceMemory(Settings(vram_budget_mb=512), nvidia_present=False).read()
    assert (reading.kind, reading.source, reading.total_bytes, reading.used_bytes) == ("cpu", "budget", 512 * MB, None)
    assert gpu.DeviceMemory(Settings(), nvidia_present=False).read().source == "nominal"


# ---- routing plans -------------------------------------------------------------------------------------------------

def plan_route(body: dict) -> tuple:
    """(target, enhancement, forwarded body) of a routed job's body, as the Router reads its request model."""
    plan = request_models.check("orchestrator.jobs", body, Settings()).to_params()
    return plan["target"], plan["enhance"], plan["forward"]


def test_route_plans():
    target, enhance, forward = plan_route({"type": "sdxl_image_fast", "prompt": "p", "config": {"steps": 3}})
    assert (target, enhance) == ("sdxl", None)
    assert forward == {"type": "sdxl_image_fast", "prompt": "p",
                                                               "config": {"steps": 3}}
    target, enhance, forward = plan_route({"type": "video7b_fast_enhanced", "prompt": "p"})
    assert target == "wan"
    assert enhance == {"model": default_enhance_model()}
    assert forward["type"] == "video_fast"
    target, enhance, forward = plan_route({"type": "image_fast", "prompt": "p", "target": "wan",
                                           "config": {"enhance_prompt": True, "frames": 1}})
    assert enhance == {"model": "instruct"}
    assert forward == {"type": "image_fast", "prompt": "p",
                                                            "config": {"frames": 1}}
    _t, enhance, _f = plan_route({"type": "sdxl_image_fast", "prompt": "p", "enhance": {"model": "base", "seed": 4}})
    assert enhance == {"model": "base", "seed": 4}
    _t, enhance, forward = plan_route({"type": "image_fast", "prompt": "p", "config": {"enhance_prompt": False}})
    assert enhance is None
    assert forward["config"] == {}
    for body, path in (({"type": "sdxl_image_fast", "prompt": "p", "target": "wan"}, "/target"),
                       ({"type": "image7b_fast_enhanced", "prompt": "p", "config": {"enhance_prompt": False}},
                        "/config/enhance_prompt")):
        with pytest.raises(ValidationFailed) as err:
            plan_route(body)
        assert err.value.details[0]["path"] == path


# ---- the broker over HTTP, with the workers' client ---------------------------------------------------------------

@pytest.fixture
def broker_api(tmp_path):
    """The orchestrator's real broker API (waitress, on the pod's own loopback socket, as __main__ serves it)
    and its public API; no worker processes are started."""
    import waitress

    from orchestrator.api import create_app
    from orchestrator.broker_api import create_broker_app
    from orchestrator.pod import Pod

    port = free_port()
    settings = Settings(orchestrator_port=port, enabled_workers="sdxl,wan", vram_budget_mb=10, vram_reserve_mb=1,
                        lease_timeout_s=0.5, api_key=API_KEY, output_dir=tmp_path)
    pod = Pod(settings, environ={})
    servers = [waitress.create_server(create_broker_app(pod), sockets=[pod.broker_socket], threads=8),
               waitress.create_server(create_app(pod), host="127.0.0.1", port=port, threads=8)]
    for server in servers:
        threading.Thread(target=server.run, daemon=True).start()
    yield pod, settings.replace(orchestrator_url=pod.broker_url, broker_token=pod.broker_token)
    for server in servers:
        server.trigger.pull_trigger(server.close)  # closed by the server's own thread, not under its select()


def test_broker_memory_client_against_the_api(broker_api):
    from workers.runtime.broker_client import BrokerMemory

    pod, settings = broker_api
    sdxl = BrokerMemory("sdxl", settings, "cpu")
    wan = BrokerMemory("wan", settings, "cpu")
    assert {e["worker"] for e in pod.broker.status()["history"] if e["event"] == "hello"} == {"sdxl", "wan"}
    sdxl.acquire("sdxl", 7 * MB, 0)
    sdxl.loaded("sdxl", 7 * MB)
    sdxl.job_started(0)
    with pytest.raises(MemoryUnavailable) as err:  # sdxl is busy: wan waits, then times out
        wan.acquire("wan_t2v", 3 * MB, 0)
    assert not err.value.too_big
    assert "timed out" in err.value.message
    with pytest.raises(MemoryUnavailable) as err:  # 10 MiB - 1 MiB reserve
        wan.admit(9 * MB + 1)
    assert err.value.too_big
    assert err.value.details["usable_bytes"] == 9 * MB
    sdxl.job_finished()
    sdxl.touch(["sdxl"])
    assert sdxl.status() == {"mode": "broker", "broker_url": settings.orchestrator_url, "held_bytes": {"sdxl": 7 * MB}}
    # an unknown worker or a malformed report is a 400, not a crash
    anon = requests.post(settings.orchestrator_url + "/broker/touch", json={"worker": "ghost", "models": []},
                         headers={"Authorization": f"Bearer {pod.broker_token}"}, timeout=5)
    assert anon.status_code == 400
    assert anon.json()["error"]["details"][0]["path"] == "/worker"
    # only the pod's own workers: no token, or the public API key, is a 401; the public port has no broker
    assert requests.post(settings.orchestrator_url + "/broker/acquire", json={"worker": "sdxl"},
                         timeout=5).status_code == 401
    probe = requests.options(settings.orchestrator_url + "/broker/acquire", timeout=5)  # as on every port: 204
    assert probe.status_code == 204
    assert "POST" in probe.headers["Allow"]
    assert requests.post(settings.orchestrator_url + "/broker/touch", json={"worker": "sdxl", "models": []},
                         headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5).status_code == 401
    assert requests.post(f"http://127.0.0.1:{settings.orchestrator_port}/broker/touch", json={"worker": "sdxl",
                                                                                              "models": []},
                         headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5).status_code == 404


def test_broker_client_refuses_when_the_broker_is_unreachable():
    from workers.runtime.broker_client import BrokerMemory

    client = BrokerMemory("sdxl", Settings(orchestrator_url=f"http://127.0.0.1:{free_port()}"), "cpu")
    with pytest.raises(MemoryUnavailable) as err:
        client.acquire("sdxl", MB, 0)
    assert "cannot be reached" in err.value.message


# ---- registration ----------------------------------------------------------------------------------------------

def test_registration_posts_the_previous_pods_bodies():
    from orchestrator.registration import Registrar

    receiver = CallbackReceiver()
    try:
        base = receiver.url.rsplit("/functions/", 1)[0]
        settings = Settings(supabase_url=base, supabase_service_key="svc", runpod_pod_id="pod42", wan_port=7860,
                            chat_port=7861, health_check_workers_s=0)  # tests/stack/test_registration.py has those
        registrar = Registrar(settings)
        registrar.worker_ready("wan")
        registrar.worker_ready("chat")
        registrar.worker_ready("sdxl")  # no registration function configured for it
        assert poll_until(lambda: len(receiver.requests) == 2 and registrar.status("chat") and registrar.status("wan"),
                          20)
        by_path = {r["path"]: r for r in receiver.requests}
        wan = by_path["/functions/v1/update-worker-url"]
        assert wan["headers"]["Authorization"] == "Bearer svc"
        assert wan["body"]["worker_url"] == "https://pod42-7860.proxy.runpod.net"
        assert wan["body"]["auto_registered"] is True
        assert wan["body"]["detection_method"] == "RUNPOD_POD_ID"
        chat = by_path["/functions/v1/register-chat-worker"]["body"]
        assert chat["worker_url"] == "https://pod42-7861.proxy.runpod.net"
        assert chat["worker_type"] == "chat"
        assert chat["capabilities"]["models"] == ["qwen_base", "qwen_instruct"]
        assert registrar.status("wan")["status"] == "registered"
        assert registrar.status("sdxl") is None
    finally:
        receiver.close()


def test_registration_retries_without_giving_up_and_needs_a_public_url():
    from orchestrator.registration import Registrar

    receiver = CallbackReceiver(status=500)
    try:
        base = receiver.url.rsplit("/functions/", 1)[0]
        registrar = Registrar(Settings(supabase_url=base, supabase_service_key="svc", runpod_pod_id="pod42",
                                       registration_backoff_s=0.01, registration_backoff_max_s=0.05))
        registrar.worker_ready("wan")
        assert poll_until(lambda: len(receiver.requests) >= 12, 20)  # the previous registrar stopped after 4
        assert registrar.status("wan")["status"] == "retrying"
        assert "HTTP 500" in registrar.status("wan")["detail"]
        registrar.stop()
        no_id = Registrar(Settings(supabase_url=base, supabase_service_key="svc"))
        no_id.worker_ready("wan")
        assert no_id.status("wan")["status"] == "skipped"
        assert "PUBLIC_URL_TEMPLATE" in no_id.status("wan")["detail"]
    finally:
        receiver.close()


# ---- the operator's table -----------------------------------------------------------------------------------

def test_memory_table_renders_the_status():
    from datetime import datetime

    from orchestrator.memory_cli import human_bytes, render_status

    assert (human_bytes(512), human_bytes(9 * MB + MB // 2), human_bytes(80 * 1024**3)) == ("512 B", "9.5 MiB", "80.0 "
                                                                                                                "GiB")
    status = {
        "devices": [{"index": 0, "kind": "cuda", "source": "nvml", "total_bytes": 80 * 1024**3,
                     "used_bytes": 30 * 1024**3, "free_bytes": 50 * 1024**3}],
        "budget": {"capacity_bytes": 80 * 1024**3, "reserve_bytes": 2 * 1024**3, "leased_bytes": 22 * 1024**3,
                   "working_bytes": 1024**3, "external_bytes": 7 * 1024**3, "available_bytes": 48 * 1024**3},
        "pressure": "low", "waiting": [], "counters": {"grant": 3, "evicted": 1},
        "workers": {"sdxl": {"state": "ready", "pid": 41, "models": {
            "sdxl": {"state": "loaded", "bytes": 7 * 1024**3, "busy": True, "last_used": "2026-01-01T00:00:00+00:00"}}},
            "chat": {"state": "restarting", "pid": None, "models": {
                "qwen_base": {"state": "unloaded", "bytes": 0, "busy": False, "last_used": None}}}},
        "history": [{"at": "2026-01-01T00:00:00.000+00:00", "event": "evicted", "worker": "wan", "model": "wan_t2v",
                     "bytes": 3 * 1024**3}],
    }
    text = render_status(status, now=datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC))
    assert "device   cuda (nvml)  total 80.0 GiB  used 30.0 GiB  free 50.0 GiB" in text
    assert "pressure low" in text
    row = next(line for line in text.splitlines() if line.startswith("sdxl"))
    assert row.split() == ["sdxl", "ready", "41", "sdxl", "loaded", "7.0", "GiB", "yes", "30s", "ago"]
    assert "qwen_base" in text
    assert "never" in text
    assert "evicted 1" in text
    assert "evicted          wan/wan_t2v  bytes=3.0 GiB" in text


# ---- routing against scripted workers (real HTTP servers standing in for the chat and SDXL workers) ------------

class StubWorker:
    """Answers `routes[(method, path)](body) -> (status, payload)`; records what it was sent."""

    def __init__(self, routes: dict):
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.routes, self.calls = routes, []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length)) if length else None
                stub.calls.append((method, self.path, body))
                route = stub.routes.get((method, self.path.split("?")[0])) or stub.routes.get((method, "*"))
                status, payload = route(self.path, body) if route else (404, {"error": {"code": "not_found"}})
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self._answer("POST")

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.state = "ready"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def is_ready(self):
        return self.state == "ready"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _record(job_id, status, **extra):
    return {"job_id": job_id, "status": status, "progress": {"stage": "generating", "step": 1, "total_steps": 2,
                                                               "percent": 50.0},
            "assets": [], "error": None, "metadata": {"parameters": {"steps": 2}}, **extra}


@pytest.fixture
def routed(tmp_path):
    """A Router with scripted chat and SDXL workers and a real callback receiver."""
    from common.callbacks import CallbackSender
    from common.jobs import JobJournal
    from orchestrator.routing import Router

    receiver = CallbackReceiver()
    made = []

    def make(chat_routes: dict, sdxl_routes: dict, journal_dir=None):
        chat, sdxl = StubWorker(chat_routes), StubWorker(sdxl_routes)
        settings = Settings(callback_url=receiver.url, callback_backoff_s=0.05, enhance_timeout_s=5)
        router = Router(settings, {"chat": chat, "sdxl": sdxl}, CallbackSender(settings),
                        JobJournal(journal_dir or tmp_path / "journal"))
        made.extend([chat, sdxl])
        return router, chat, sdxl

    yield make, receiver
    for stub in made:
        stub.close()
    receiver.close()


def _accepting_sdxl(records: dict):
    def generate(path, body):
        if "dry_run" in path:
            return 200, {"valid": True}
        records[body["id"]] = body
        return 202, {"job_id": body["id"], "status": "queued"}
    return {("POST", "/generate"): generate,
            ("GET", "*"): lambda path, _b: (200, _record(path.rsplit("/", 1)[1], "completed"))}


ENHANCED = {"type": "sdxl_image_fast", "prompt": "a fox", "enhance": {"model": "base", "seed": 1}}


def test_routing_enhancement_failures_fail_the_job(routed):
    make, receiver = routed
    chat_answers = iter([(200, {"success": True, "enhanced_prompt": "   "}), (500, {"error": {"code": "internal_error",
                                                                                          "message": "boom"}})])
    submitted = {}
    router, chat, sdxl = make({("POST", "/enhance/base"): lambda p, b: next(chat_answers)}, _accepting_sdxl(submitted))
    empty, _ = router.submit(dict(ENHANCED, id="e1"))
    assert router.wait("e1", 5)
    assert empty.status == "failed"
    assert empty.error["code"] == "enhancement_failed"
    assert "empty" in empty.error["message"]
    broken, _ = router.submit(dict(ENHANCED, id="e2"))
    assert router.wait("e2", 5)
    assert broken.status == "failed"
    assert "HTTP 500" in broken.error["message"]
    assert "boom" in broken.error["message"]
    assert not submitted
    assert chat.calls[0][2] == {"prompt": "a fox", "target_model": "sdxl", "seed": 1}
    assert [c["status"] for c in receiver.wait_for(2)] == ["failed", "failed"]


def test_routing_cancel_while_enhancing_never_generates(routed):
    make, receiver = routed
    release = threading.Event()

    def slow_enhance(path, body):
        release.wait(5)
        return 200, {"success": True, "enhanced_prompt": "a fox, golden light", "model": "base"}

    submitted = {}
    router, _chat, sdxl = make({("POST", "/enhance/base"): slow_enhance}, _accepting_sdxl(submitted))
    record, _ = router.submit(dict(ENHANCED, id="c1"))
    assert poll_until(lambda: record.progress["stage"] == "enhancing", 20)
    assert router.cancel("c1").status == "cancelled"
    release.set()
    time.sleep(0.3)
    assert record.status == "cancelled"
    assert not submitted
    assert [c for c in sdxl.calls if c[0] == "POST" and "dry_run" not in c[1]] == []
    assert [c["status"] for c in receiver.wait_for(1, "c1")] == ["cancelled"]
    with pytest.raises(ValueError, match="job c1 already cancelled"):
        router.cancel("c1")


def test_routing_an_enhancement_thread_survives_a_journal_that_fails_twice(tmp_path, routed):
    """A job whose journal write fails after its enhancement, and again while it is failed (a full disk),
    does not take its enhancement thread with it: with one thread (CHAT_BATCH_SIZE 1), the job queued
    behind it is still enhanced and generated (issue 21 review: the slot used to be lost for good)."""
    from common.callbacks import CallbackSender
    from common.jobs import JobJournal
    from orchestrator.routing import Router

    class FullDiskFor(JobJournal):
        def write(self, record):
            if record.job_id == "disk" and record.metadata.get("enhanced_prompt"):
                raise OSError(28, "No space left on device")
            super().write(record)

    _make, receiver = routed
    release = threading.Event()

    def enhance(path, body):
        release.wait(10)
        return 200, {"success": True, "enhanced_prompt": f"{body['prompt']}, golden light", "model": "base"}

    submitted: dict = {}
    chat, sdxl = StubWorker({("POST", "/enhance/base"): enhance}), StubWorker(_accepting_sdxl(submitted))
    try:
        settings = Settings(callback_url=receiver.url, callback_backoff_s=0.05, enhance_timeout_s=5, chat_batch_size=1)
        router = Router(settings, {"chat": chat, "sdxl": sdxl}, CallbackSender(settings),
                        FullDiskFor(tmp_path / "journal"))
        router.submit(dict(ENHANCED, id="disk"))
        behind, _ = router.submit(dict(ENHANCED, id="behind"))
        release.set()
        assert router.wait("behind", 20), behind.error
        assert behind.status == "completed", behind.error
        assert submitted["behind"]["prompt"] == "a fox, golden light"
        assert "disk" not in submitted
    finally:
        chat.close()
        sdxl.close()


def test_routing_mirrors_the_worker_and_fails_a_lost_job(routed):
    make, receiver = routed
    polls = iter([(200, _record("g1", "queued")), (200, _record("g1", "processing")),
                  (200, _record("g1", "completed", assets=[{"type": "image", "url": "anonymous/g1/0.png"}]))])
    submitted = {}
    routes = _accepting_sdxl(submitted)
    routes[("GET", "/jobs/g1")] = lambda p, b: next(polls)
    routes[("GET", "/jobs/lost")] = lambda p, b: (404, {"error": {"code": "not_found"}})
    router, _chat, _sdxl = make({}, routes)
    record, created = router.submit({"type": "sdxl_image_fast", "prompt": "p", "id": "g1"})
    assert created
    assert submitted["g1"]["prompt"] == "p"
    assert router.wait("g1", 5)
    assert record.status == "completed"
    assert record.assets[0]["url"] == "anonymous/g1/0.png"
    assert record.metadata["stages"] == ["generating", "storing"]
    assert record.metadata["parameters"] == {"steps": 2}
    lost, _ = router.submit({"type": "sdxl_image_fast", "prompt": "p", "id": "lost"})
    assert router.wait("lost", 5)
    assert lost.error["code"] == "worker_lost_job"


def test_routing_relays_the_workers_refusal(routed):
    from common.errors import WorkerRefused as ApiError  # the worker's refusal, passed on

    make, _receiver = routed
    refusal = {"error": {"code": "insufficient_memory", "message": "needs 9 bytes", "details": [{"too_big": True}]}}
    router, _chat, _sdxl = make({}, {("POST", "/generate"): lambda p, b: (409, refusal)})
    with pytest.raises(ApiError) as err:
        router.submit({"type": "sdxl_image_fast", "prompt": "p", "id": "big"})
    assert (err.value.status, err.value.code, err.value.details) == (409, "insufficient_memory", [{"too_big": True}])
    assert router.get("big") is None  # refused: no record, the id stays free


def test_routing_recovers_after_an_orchestrator_restart(routed, tmp_path):
    from common.jobs import JobJournal, JobRecord

    make, receiver = routed
    journal = JobJournal(tmp_path / "old")
    journal.write(JobRecord("r1", "sdxl_image_fast", "u", {"target": "sdxl", "enhance": None, "forward": {}},
                            status="processing", metadata={"original_prompt": "p", "enhanced_prompt": None,
                                                           "stages": []}))
    done = JobRecord("r2", "sdxl_image_fast", "u", {"target": "sdxl"}, status="completed",
                     callback={"status": "pending", "attempts": 1})
    journal.write(done)
    # r3 finished on its worker while no orchestrator was there: the restarted one asks and reports what it did
    journal.write(JobRecord("r3", "sdxl_image_fast", "u", {"target": "sdxl", "enhance": None, "forward": {}},
                            status="processing", metadata={"original_prompt": "p", "enhanced_prompt": None,
                                                           "stages": []}))
    finished = _record("r3", "completed", assets=[{"type": "image", "url": "u/r3/0.png"}])
    router, _chat, _sdxl = make({}, {("GET", "/jobs/r3"): lambda path, body: (200, finished)},
                                journal_dir=tmp_path / "old")
    statuses = {c["job_id"]: c["status"] for c in receiver.wait_for(3)}
    assert statuses == {"r1": "failed", "r2": "completed", "r3": "completed"}
    # r1 never reached its worker (404 there): failed, saying so
    assert router.get("r1").status == "failed"
    assert router.get("r1").error["code"] == "orchestrator_restarted"
    assert "never received it" in router.get("r1").error["message"]
    assert router.get("r3").assets == [{"type": "image", "url": "u/r3/0.png"}]


def test_routing_cancel_during_the_submission_reaches_the_worker(routed):
    make, receiver = routed
    release = threading.Event()

    def slow_generate(path, body):
        release.wait(5)
        return 202, {"job_id": body["id"], "status": "queued"}

    router, _chat, sdxl = make({}, {("POST", "/generate"): slow_generate,
                                    ("POST", "/jobs/r1/cancel"): lambda p, b: (200, _record("r1", "cancelled")),
                                    ("GET", "/jobs/r1"): lambda p, b: (200, _record("r1", "cancelled"))})
    submitting = threading.Thread(target=router.submit, args=({"type": "sdxl_image_fast", "prompt": "p", "id": "r1"},))
    submitting.start()
    assert poll_until(lambda: router.get("r1") is not None and sdxl.calls, 20)
    assert router.cancel("r1").status == "cancelled"  # the worker has not answered yet
    release.set()
    submitting.join(5)
    assert poll_until(lambda: ("POST", "/jobs/r1/cancel", None) in sdxl.calls, 20), \
        "the worker must hear of the cancel"
    assert [c["status"] for c in receiver.wait_for(1, "r1")] == ["cancelled"]
