"""The orchestrator with its three workers, as real processes on free ports, on the placeholder profile.

One stack for the module (started once, stopped by the last test with SIGTERM). The memory budget is
10 MiB with no reserve: it fits the SDXL placeholder (8.9 MiB measured) with a chat model (0.8 MiB),
but not SDXL with WAN (1.6 MiB + 1.8 MiB working memory for a 32x32x9 video), so switching between
SDXL and WAN jobs has to evict. A second, small orchestrator whose worker cannot boot shows the
restart limit.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import requests

from tests.support import REPO, Client, OrchestratorProcess, wait_until

pytestmark = pytest.mark.timeout(300)

BUDGET_MB = 10


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of a worker's process group."""
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


@pytest.fixture(scope="module")
def stack(start_pod):
    # ready: every test may run alone (-k), not only after the readiness test
    pod = start_pod("pod", callbacks=True, VRAM_BUDGET_MB=BUDGET_MB, VRAM_RESERVE_MB=0, LEASE_TIMEOUT_S=90,
                    RESTART_BACKOFF_S=0.2, RESTART_LIMIT=3, SHUTDOWN_GRACE_S=60)
    yield pod
    if pod.proc.poll() is None:  # a test failed before the SIGTERM test: stop it all the same
        groups = [w["pid"] for w in (_workers_or_none(pod) or {}).values() if w.get("pid")]
        pod.stop()
        for pgid in groups:
            for proc in group_members(pgid):
                proc.kill()


@pytest.fixture(scope="module")
def receiver(stack):
    return stack.receiver


def job(job_type: str, prompt: str = "a red fox", **config) -> dict:
    body = {"type": job_type, "prompt": prompt, "user_id": "u1", "config": {"seed": 7, "steps": 2, **config}}
    return body


def submit(pod: OrchestratorProcess, body: dict, expect: int = 202) -> str:
    response = pod.client.post("/jobs", json=body)
    assert response.status_code == expect, response.text
    return response.json()["job_id"] if expect in (200, 202) else response.json()


# ---- tests, in order: the last one stops the stack -----------------------------------------------------

def test_all_workers_ready_through_readiness_polling(stack):
    ready = stack.wait_ready()
    assert ready["workers"] == {"sdxl": "ready", "wan": "ready", "chat": "ready"}
    workers = stack.workers()
    for info in workers.values():
        assert info["state"] == "ready"
        assert info["restarts"] == 0
        assert psutil.pid_exists(info["pid"])
        # each worker leads its own session: a terminal's Ctrl-C reaches only the orchestrator
        assert os.getsid(info["pid"]) == info["pid"] != os.getsid(stack.proc.pid)
        assert requests.get(info["url"] + "/ready", timeout=5).status_code == 200
    memory = stack.client.get("/memory/status").json()
    assert memory["devices"] == [{"index": 0, "kind": "cpu", "source": "budget", "total_bytes": BUDGET_MB * 2**20,
                                  "used_bytes": 0, "free_bytes": BUDGET_MB * 2**20}]
    assert {w: set(v["models"]) for w, v in memory["workers"].items()} == {
        "sdxl": {"sdxl"}, "wan": {"wan_t2v", "wan_vace"}, "chat": {"qwen_base", "qwen_instruct"}}
    assert {e["worker"] for e in memory["history"] if e["event"] == "hello"} == {"sdxl", "wan", "chat"}
    assert stack.client.get("/ready").status_code == 200
    assert requests.get(stack.url + "/workers", timeout=5).status_code == 401  # bearer required
    assert stack.client.get("/openapi.json").json()["paths"]["/jobs"]["post"]["requestBody"]


def test_options_is_204_with_allow_on_every_process_without_a_key_and_runs_no_handler(stack):
    """The app's endpoint discovery probes OPTIONS on /chat, /enhance, /api/chat, /generate with no key and
    reads `capabilities` and `endpoints` from /health (issue 17 item 6)."""
    urls = {"orchestrator": stack.url, **{name: info["url"] for name, info in stack.workers().items()}}
    probes = {"orchestrator": {"/jobs": "POST", "/health": "GET", "/memory/unload": "POST", "/jobs/x1": "GET"},
              "sdxl": {"/generate": "POST", "/memory/load": "POST", "/jobs/x1/cancel": "POST"},
              "wan": {"/generate": "POST", "/ready": "GET"},
              "chat": {"/chat": "POST", "/enhance": "POST", "/v1/chat/completions": "POST", "/metrics": "GET"}}
    for process, routes in probes.items():
        for path, method in routes.items():
            answer = requests.options(urls[process] + path, timeout=10)  # no Authorization header
            assert answer.status_code == 204, (process, path, answer.status_code, answer.text)
            allowed = {m.strip() for m in answer.headers["Allow"].split(",")}
            assert {method, "OPTIONS"} <= allowed, (process, path, allowed)
            assert answer.content == b""
        unknown = requests.options(urls[process] + "/api/chat", timeout=10)
        assert unknown.status_code == 404, unknown.text
        assert unknown.json()["error"]["code"] == "not_found", unknown.text
        health = requests.get(urls[process] + "/health", timeout=10).json()
        assert health["status"] == "ok"
        assert health["capabilities"]["role"]
        assert all(path.split("/x1")[0] in str(health["endpoints"]) for path in routes), health["endpoints"]
    # a job body sent with OPTIONS is not a job: no handler ran
    body = {**job("sdxl_image_fast"), "id": "options-probe"}
    assert requests.options(urls["sdxl"] + "/generate", json=body, timeout=10).status_code == 204
    assert requests.options(stack.url + "/jobs", json=body, timeout=10).status_code == 204
    assert Client(urls["sdxl"]).get("/jobs/options-probe").status_code == 404
    assert stack.client.get("/jobs/options-probe").status_code == 404
    chat = requests.get(urls["chat"] + "/health", timeout=10).json()
    assert chat["capabilities"]["chat"] is True
    assert chat["capabilities"]["models"] == ["qwen_base", "qwen_instruct"]
    assert chat["endpoints"]["/chat"] == ["POST"]
    assert chat["endpoints"]["/enhance"] == ["POST"]
    assert requests.get(urls["sdxl"] + "/health", timeout=10).json()["capabilities"]["generate"] is True
    # everything else still needs the key
    assert requests.post(stack.url + "/jobs", json=body, timeout=10).status_code == 401
    assert requests.get(urls["chat"] + "/openapi.json", timeout=10).status_code == 401


def test_enhanced_sdxl_job_one_id_both_prompts_one_callback(stack, receiver):
    body = job("sdxl_image_fast", "a red fox")
    body["enhance"] = {"model": "instruct", "max_tokens": 12, "seed": 3, "system_prompt": "Describe the scene."}
    body["id"] = "enh-sdxl-1"
    job_id = submit(stack, body)
    assert job_id == "enh-sdxl-1"
    record = stack.client.wait_job(job_id, 120)
    assert record["status"] == "completed", record
    meta = record["metadata"]
    assert meta["original_prompt"] == "a red fox"
    assert meta["enhanced_prompt"]
    assert meta["enhanced_prompt"] != "a red fox"
    assert meta["parameters"]["prompt"] == meta["enhanced_prompt"]  # the generation used the enhanced prompt
    assert meta["enhancement"]["model"] == "instruct"
    assert meta["enhancement"]["parameters"]["seed"] == 3
    stages = meta["stages"]
    assert stages[0] == "enhancing"
    assert stages[-1] == "storing"
    assert stages.index("enhancing") < stages.index("generating") < stages.index("storing")
    assert record["assets"][0]["url"] == f"u1/{job_id}/0.png"
    # the worker ran it under the same id, and sent no callback of its own
    worker = requests.get(stack.workers()["sdxl"]["url"] + f"/jobs/{job_id}",
                          headers={"Authorization": stack.client.session.headers["Authorization"]}, timeout=5).json()
    assert worker["status"] == "completed"
    assert worker["callback"]["status"] == "disabled"
    callbacks = receiver.wait_for(1, job_id)
    time.sleep(0.5)
    assert len(receiver.bodies(job_id)) == 1
    assert callbacks[0]["status"] == "completed"
    assert callbacks[0]["metadata"]["original_prompt"] == "a red fox"
    assert callbacks[0]["metadata"]["enhanced_prompt"] == meta["enhanced_prompt"]
    # a repeated id is the same job, never run twice
    again = stack.client.post("/jobs", json=body)
    assert again.status_code == 200
    assert again.json()["duplicate"] is True


def test_enhanced_wan_jobs_legacy_type_and_flag(stack, receiver):
    legacy = job("video7b_fast_enhanced", "a boat at dawn")
    flagged = job("image_fast", "a lighthouse")
    flagged["config"]["enhance_prompt"] = True
    ids = [submit(stack, legacy), submit(stack, flagged)]
    for job_id, kind, name in zip(ids, ("video", "image"), ("0.mp4", "0.png"), strict=True):
        record = stack.client.wait_job(job_id, 120)
        assert record["status"] == "completed", record
        assert record["metadata"]["enhanced_prompt"]
        assert record["metadata"]["original_prompt"] in ("a boat at dawn",
                                                                                                   "a lighthouse")
        assert record["metadata"]["enhancement"]["model"] == "instruct"  # the chat worker's legacy default
        assert record["metadata"]["stages"][0] == "enhancing"
        assert record["assets"][0]["type"] == kind
        assert record["assets"][0]["url"].endswith(name)
        assert [c["status"] for c in receiver.wait_for(1, job_id)] == ["completed"]
    assert stack.client.get(f"/jobs/{ids[0]}").json()["type"] == "video7b_fast_enhanced"


def test_enhancement_failure_fails_the_job_with_its_reason(stack, receiver):
    # SDXL takes a prompt of any length (it reports truncation); the chat model refuses one over its
    # max_prompt_tokens: the job must fail, not run on the original prompt.
    job_id = submit(stack, {**job("sdxl_image_fast", "fox " * 3000), "enhance": {"model": "base", "max_tokens": 8}})
    record = stack.client.wait_job(job_id, 60)
    assert record["status"] == "failed", record
    assert record["error"]["code"] == "enhancement_failed", record
    assert "HTTP 400" in record["error"]["message"]
    assert "tokens" in record["error"]["message"]
    assert record["metadata"]["enhanced_prompt"] is None
    assert not record["assets"]
    assert record["metadata"]["stages"] == ["enhancing"]
    assert receiver.wait_for(1, job_id)[0]["error_message"] == record["error"]["message"]


def test_invalid_bodies_are_refused_before_anything_runs(stack):
    bad = stack.client.post("/jobs", json={**job("sdxl_image_fast"), "target": "wan"})
    assert bad.status_code == 400
    assert bad.json()["error"]["details"][0]["path"] == "/target"
    bad = stack.client.post("/jobs", json={**job("sdxl_image_fast", steps=500), "enhance": {"model": "base"}})
    assert bad.status_code == 400
    assert bad.json()["error"]["details"][0]["path"] == "/config/steps"
    bad = stack.client.post("/jobs", json={**job("video7b_fast_enhanced", enhance_prompt=False)})
    assert bad.status_code == 400
    assert bad.json()["error"]["details"][0]["path"] == "/config/enhance_prompt"
    assert stack.client.get("/jobs/nope").status_code == 404


def test_too_big_job_gets_409_with_numbers(stack):
    body = job("video_fast", width=128, height=128, frames=33)
    response = stack.client.post("/jobs", json=body)
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "insufficient_memory"
    detail = error["details"][0]
    assert detail["too_big"] is True
    assert detail["usable_bytes"] == BUDGET_MB * 2**20
    assert detail["need_bytes"] > detail["usable_bytes"]
    assert str(detail["need_bytes"]) in error["message"]
    assert str(BUDGET_MB * 2**20) in error["message"]


def test_alternating_jobs_with_a_budget_for_one_generation_model(stack, receiver):
    bodies = [job("sdxl_image_fast"), job("video_fast"), job("sdxl_image_fast", steps=3), job("video_fast", steps=3),
              job("sdxl_image_fast")]
    ids = [submit(stack, b) for b in bodies]
    records = [stack.client.wait_job(i, 180) for i in ids]
    assert [r["status"] for r in records] == ["completed"] * len(ids), [r["error"] for r in records]
    for job_id in ids:
        assert [c["status"] for c in receiver.wait_for(1, job_id)] == ["completed"]
    memory = stack.client.get("/memory/status", params={"history": 500}).json()
    history = memory["history"]
    assert 0 < len(stack.client.get("/memory/status").json()["history"]) <= 100  # the default: the last 100
    assert len(stack.client.get("/memory/status", params={"history": 3}).json()["history"]) == 3
    assert stack.client.get("/memory/status", params={"history": 0}).json()["history"] == []
    evicted = [(e["worker"], e["model"]) for e in history if e["event"] == "evicted"]
    assert ("sdxl", "sdxl") in evicted, evicted
    assert ("wan", "wan_t2v") in evicted, evicted
    # never unloaded while its job ran: between a worker's job_started and job_finished no model of it is evicted
    running: dict[str, int] = {}
    for event in history:
        if event["event"] == "job_started":
            running[event["worker"]] = running.get(event["worker"], 0) + 1
        elif event["event"] == "job_finished":
            running[event["worker"]] -= 1
        elif event["event"] in ("evict_requested", "evicted") and event["for_worker"] != event["worker"]:
            # (a worker's own request may ask it to unload another of its models: its ModelHost decides)
            assert not running.get(event["worker"]), f"{event} while a job of {event['worker']} ran"
    # the budget was honoured at every grant: the sizes this test relies on are the measured ones
    sizes = {(e["worker"], e["model"]): e["bytes"] for e in history if e["event"] == "loaded"}
    assert sizes[("sdxl", "sdxl")] + sizes[("wan", "wan_t2v")] > BUDGET_MB * 2**20 >= sizes[("sdxl", "sdxl")]
    assert memory["budget"]["leased_bytes"] <= BUDGET_MB * 2**20


def test_operator_command_line(stack):
    env = dict(stack.env, ORCHESTRATOR_URL=stack.url)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "orchestrator.memory_cli", *args], env=env, cwd=REPO,
                              capture_output=True,
                              text=True, timeout=120)

    loaded = cli("load", "chat", "qwen_instruct")
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "chat: loaded qwen_instruct", loaded.stderr
    status = cli("status")
    assert status.returncode == 0
    assert any("qwen_instruct  loaded" in line for line in status.stdout.splitlines())
    unloaded = cli("unload", "chat", "qwen_instruct", "--wait", "30")
    assert unloaded.returncode == 0, unloaded.stderr
    assert unloaded.stdout.strip() == "chat: unloaded qwen_instruct", unloaded.stderr
    status = cli("status")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].startswith(f"device   cpu (budget)  total {BUDGET_MB}.0 MiB")
    assert any(line.split()[:1] == ["WORKER"] for line in lines)
    assert any("qwen_instruct  unloaded" in line for line in lines)
    assert "decisions  grant" in status.stdout
    assert "evicted" in status.stdout
    wrong = cli("load", "chat", "nonexistent")
    assert wrong.returncode == 1
    assert "400" in wrong.stderr
    assert "nonexistent" in wrong.stderr


def test_cancel_through_the_orchestrator(stack, receiver):
    job_id = submit(stack, job("sdxl_image_fast", steps=100))
    wait_until(lambda: stack.client.get(f"/jobs/{job_id}").json()["progress"]["step"] >= 1, 120, "the job to step")
    response = stack.client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 200
    record = stack.client.wait_job(job_id, 60)
    assert record["status"] == "cancelled"
    assert not record["assets"]
    assert [c["status"] for c in receiver.wait_for(1, job_id)] == ["cancelled"]
    assert stack.client.post(f"/jobs/{job_id}/cancel").status_code == 409


def test_kill_9_of_a_worker_fails_its_job_and_restarts_it(stack, receiver):
    before = stack.workers()["sdxl"]
    job_id = submit(stack, job("sdxl_image_fast", steps=100))
    wait_until(lambda: stack.client.get(f"/jobs/{job_id}").json()["status"] == "processing", 120, "processing")
    os.kill(before["pid"], signal.SIGKILL)  # the gunicorn master
    record = stack.client.wait_job(job_id, 60)
    assert record["status"] == "failed", record
    assert record["error"]["code"] == "worker_died", record
    assert "killed by SIGKILL" in record["error"]["message"]
    callback = receiver.wait_for(1, job_id)
    assert [c["status"] for c in callback] == ["failed"]
    assert "SIGKILL" in callback[0]["error_message"]
    # everything of the dead worker's process group is gone, and a new one serves
    wait_until(lambda: not group_members(before["pid"]), 30, "the old process group to be gone")
    after = wait_until(lambda: (w := stack.workers()["sdxl"])["state"] == "ready" and w["pid"] != before["pid"] and w,
                     120, "the sdxl worker to be restarted")
    assert after["restarts"] == 1
    assert after["last_exit"] == "killed by SIGKILL"
    memory = stack.client.get("/memory/status").json()
    assert any(e["event"] == "worker_gone" and e["worker"] == "sdxl" for e in memory["history"])
    assert not memory["workers"]["sdxl"]["models"]["sdxl"]["loaded"]  # what the dead process held is free


def test_sigterm_lets_the_running_job_finish_then_everything_exits(stack, receiver):
    groups = {name: info["pid"] for name, info in stack.workers().items()}
    job_id = submit(stack, job("sdxl_image_fast", steps=40))
    wait_until(lambda: stack.client.get(f"/jobs/{job_id}").json()["progress"]["step"] >= 1, 120, "the job to step")
    stack.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: requests.get(stack.url + "/ready", timeout=5).status_code == 503, 10, "/ready to answer 503")
    refused = stack.client.post("/jobs", json=job("sdxl_image_fast"))
    assert refused.status_code == 503
    assert refused.headers.get("Retry-After")
    assert stack.proc.wait(120) == 0
    assert [c["status"] for c in receiver.wait_for(1, job_id)] == ["completed"]
    for name, pgid in groups.items():
        assert not group_members(pgid), f"{name} left processes behind"
    assert "shutdown complete" in stack.log()


def test_a_worker_that_keeps_dying_ends_failed(start_pod):
    # A setting only the workers' gunicorn reads is invalid: every start of the worker exits at once.
    pod = start_pod("dying", workers=("sdxl",), ready=False, GUNICORN_THREADS=-1, RESTART_LIMIT=2,
                    RESTART_BACKOFF_S=0.1)
    try:
        info = wait_until(lambda: (w := _workers_or_none(pod)) and w["sdxl"]["state"] == "failed" and w["sdxl"],
                        60, "the worker to be marked failed")
        assert info["restarts"] == 2
        assert info["consecutive_failures"] == 3
        assert info["pid"] is None
        assert info["last_exit"] == "exited with status 1"
        assert info["incarnation"] == 3
        time.sleep(1.0)
        info = _workers_or_none(pod)["sdxl"]
        assert info["state"] == "failed"
        assert info["incarnation"] == 3
        ready = requests.get(pod.url + "/ready", timeout=5)
        assert ready.status_code == 503
        assert "sdxl failed" in ready.json()["error"]["message"]
        refused = pod.client.post("/jobs", json=job("sdxl_image_fast"))
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "worker_unavailable"
        assert pod.log().count("sdxl worker died") == 3
        assert "restarting sdxl worker in 0.1s" in pod.log()
        assert "restarting sdxl worker in 0.2s" in pod.log()
    finally:
        assert pod.stop() == 0


def _workers_or_none(pod):
    try:
        return pod.workers()
    except (requests.RequestException, ValueError):
        return None


def test_workers_stop_when_the_orchestrator_is_killed(start_pod):
    pod = start_pod("orphaned", workers=("sdxl",), ready=False)
    pgid = None
    try:
        pod.wait_ready()
        pgid = pod.workers()["sdxl"]["pid"]
        assert group_members(pgid)
        pod.proc.kill()  # SIGKILL: no shutdown code runs in the orchestrator
        pod.proc.wait(10)
        # the kernel's parent-death signal (orchestrator.launch) makes the worker stop by itself
        wait_until(lambda: not group_members(pgid), 60, "the orphaned worker to stop")
    finally:
        pod.stop()
        for proc in group_members(pgid) if pgid else []:  # only if the test failed
            proc.kill()
