"""Queue intake in real worker processes (gunicorn) on a real redis-server: two consumers sharing one
queue, Redis restarted mid-run, and a worker killed with SIGKILL in the middle of a queued job."""
from __future__ import annotations

import signal
import time

import pytest
import requests

from tests.app_client import queue_job_payload, rpush
from tests.redis_support import RedisServer
from tests.support import CallbackReceiver, WorkerProcess, base_env

QUEUE = "worker_test_sdxl_queue"
TERMINAL = ("completed", "failed", "cancelled")


def small_job(i: int, steps: int = 2, images: int = 1) -> dict:
    """An app payload at the placeholder's native size (no resolution), so a job takes a moment."""
    payload = queue_job_payload(seed=i, num_images=images)
    del payload["config"]["resolution"]
    payload["config"]["num_inference_steps"] = steps
    return payload


def env_for(tmp_path, placeholder_dir, redis_url: str, callback_url: str, name: str, queue: str = QUEUE) -> dict:
    return base_env(tmp_path / name, placeholder_dir, REDIS_URL=redis_url, SDXL_QUEUE=queue, CALLBACK_URL=callback_url,
                    QUEUE_BLOCK_S="0.2", QUEUE_HEARTBEAT_TTL_S="3", QUEUE_REAP_INTERVAL_S="1")


def terminal(receiver: CallbackReceiver, job_id: str) -> list[dict]:
    return [b for b in receiver.bodies(job_id) if b["status"] in TERMINAL]


def wait_all(receiver, ids, timeout_s=240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(terminal(receiver, i) for i in ids):
        time.sleep(0.1)
    missing = [i for i in ids if not terminal(receiver, i)]
    assert not missing, f"no terminal callback for {missing}"


def settled(client, queue=QUEUE, timeout_s=15) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lists = [queue] + [k.decode() for k in client.keys(f"{queue}:processing:*")]
        if all(client.llen(name) == 0 for name in lists):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def redis():
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def receiver():
    r = CallbackReceiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory, placeholder_dir, redis, receiver):
    tmp = tmp_path_factory.mktemp("pair")
    workers = [WorkerProcess("sdxl", env_for(tmp, placeholder_dir, redis.url, receiver.url, f"w{i}")) for i in range(2)]
    for worker in workers:
        worker.start()
    yield workers
    for worker in workers:
        worker.stop()


def test_two_consumers_share_the_queue_each_job_once(pair, redis, receiver):
    client = redis.client()
    jobs = [small_job(i) for i in range(20)]
    for job in jobs:
        rpush(client, job, QUEUE)
    wait_all(receiver, [j["id"] for j in jobs])
    time.sleep(0.5)
    assert all(len(terminal(receiver, j["id"])) == 1 for j in jobs)
    assert all(terminal(receiver, j["id"])[0]["status"] == "completed" for j in jobs)
    ran = [sum(w.client.get(f"/jobs/{j['id']}").status_code == 200 for j in jobs) for w in pair]
    assert sum(ran) == 20 and min(ran) > 0, ran
    assert settled(client)
    consumers = [w.client.get("/ready").json()["queue"]["consumer_id"] for w in pair]
    assert len(set(consumers)) == 2


def test_redis_restarted_mid_run_loses_nothing(pair, redis, receiver):
    client = redis.client()
    jobs = [small_job(100 + i, steps=4) for i in range(6)]
    for job in jobs:
        rpush(client, job, QUEUE)
    wait_all(receiver, [jobs[0]["id"]])
    redis.restart(down_s=1.5)  # SIGKILL: only what the append-only file holds survives, as on a hosted Redis
    wait_all(receiver, [j["id"] for j in jobs])
    time.sleep(0.5)
    assert all(len(terminal(receiver, j["id"])) == 1 for j in jobs)
    assert {terminal(receiver, j["id"])[0]["status"] for j in jobs} == {"completed"}
    assert settled(redis.client())
    states = [w.client.get("/ready").json()["queue"] for w in pair]
    assert all(s["connected"] for s in states)
    assert sum(s["reconnects"] for s in states) >= 1, states


def test_sigkill_mid_job_one_terminal_callback_and_the_rest_complete(tmp_path, placeholder_dir, redis, receiver):
    client, queue = redis.client(), "killed_worker_queue"  # not the pair's: they would take these jobs
    env = env_for(tmp_path, placeholder_dir, redis.url, receiver.url, "killed", queue)
    worker = WorkerProcess("sdxl", env).start()
    long_job = small_job(200, steps=60, images=6)
    behind = [small_job(201 + i) for i in range(3)]
    try:
        rpush(client, long_job, queue)
        for job in behind:
            rpush(client, job, queue)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            record = worker.client.get(f"/jobs/{long_job['id']}")
            if record.status_code == 200 and record.json()["progress"].get("step", 0) >= 1:
                break
            time.sleep(0.05)
        assert record.json()["status"] == "processing", record.json()
        worker.stop(signal.SIGKILL)
        assert not terminal(receiver, long_job["id"])
        worker = WorkerProcess("sdxl", env).start()  # same journal, same consumer id
        wait_all(receiver, [long_job["id"], *(j["id"] for j in behind)])
        time.sleep(1.0)
        [ended] = terminal(receiver, long_job["id"])
        assert ended["status"] == "failed" and ended["metadata"]["error_type"] == "worker_restarted"
        for job in behind:
            [done] = terminal(receiver, job["id"])
            assert done["status"] == "completed"
        assert settled(client, queue)
    finally:
        worker.stop()


def test_ready_reports_redis_down_and_http_keeps_serving(tmp_path, placeholder_dir, receiver):
    with RedisServer() as server:
        env = env_for(tmp_path, placeholder_dir, server.url, receiver.url, "outage")
        with WorkerProcess("sdxl", env) as worker:
            server.stop()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and worker.client.get("/ready").json()["queue"]["connected"]:
                time.sleep(0.1)
            ready = worker.client.get("/ready")
            assert ready.status_code == 200
            queue = ready.json()["queue"]
            assert queue["connected"] is False and queue["last_error"] and queue["disconnected_since"]
            answer = worker.client.post("/generate?wait=120", json={"type": "sdxl_image_fast", "prompt": "a fox",
                                                                     "config": {"steps": 2}})
            assert answer.status_code == 200 and answer.json()["status"] == "completed"
            server.start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not worker.client.get("/ready").json()["queue"]["connected"]:
                time.sleep(0.1)
            assert worker.client.get("/ready").json()["queue"]["connected"]
    with pytest.raises(requests.RequestException):
        requests.get(worker.url + "/health", timeout=1)
