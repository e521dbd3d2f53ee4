"""Queue intake in real worker processes (gunicorn) on a real redis-server: two consumers sharing one
queue, Redis restarted mid-run, and a worker killed with SIGKILL in the middle of a queued job."""
from __future__ import annotations

import signal
import time

import pytest
import requests

from tests.app_client import queue_job_payload, rpush
from tests.redis_support import RedisServer
from tests.support import CallbackReceiver, WorkerProcess, base_env, poll_until, wait_until

QUEUE = "worker_test_sdxl_queue"


def small_job(i: int, steps: int = 2, images: int = 1) -> dict:
    """An app payload at the placeholder's native size (no resolution), so a job takes a moment."""
    payload = queue_job_payload(seed=i, num_images=images)
    del payload["config"]["resolution"]
    payload["config"]["num_inference_steps"] = steps
    return payload


def env_for(tmp_path, placeholder_dir, redis_url: str, callback_url: str, name: str, queue: str = QUEUE) -> dict:
    return base_env(tmp_path / name, placeholder_dir, REDIS_URL=redis_url, SDXL_QUEUE=queue, CALLBACK_URL=callback_url,
                    QUEUE_BLOCK_S="0.2", QUEUE_HEARTBEAT_TTL_S="3", QUEUE_REAP_INTERVAL_S="1")


def wait_all(receiver: CallbackReceiver, ids, timeout_s=240) -> None:
    poll_until(lambda: all(receiver.terminal(i) for i in ids), timeout_s)
    missing = [i for i in ids if not receiver.terminal(i)]
    assert not missing, f"no terminal callback for {missing}"


def settled(client, queue=QUEUE, timeout_s=15) -> bool:
    def empty() -> bool:
        lists = [queue] + [k.decode() for k in client.keys(f"{queue}:processing:*")]
        return all(client.llen(name) == 0 for name in lists)
    return poll_until(empty, timeout_s)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, placeholder_dir, redis_server, module_receiver):
    tmp = tmp_path_factory.mktemp("pair")
    workers = [WorkerProcess("sdxl", env_for(tmp, placeholder_dir, redis_server.url, module_receiver.url, f"w{i}"))
               for i in range(2)]
    for worker in workers:
        worker.start()
    yield workers
    for worker in workers:
        worker.stop()


def test_two_consumers_share_the_queue_each_job_once(pair, redis_server, module_receiver):
    client = redis_server.client()
    jobs = [small_job(i) for i in range(20)]
    for job in jobs:
        rpush(client, job, QUEUE)
    wait_all(module_receiver, [j["id"] for j in jobs])
    time.sleep(0.5)
    assert all(len(module_receiver.terminal(j["id"])) == 1 for j in jobs)
    assert all(module_receiver.terminal(j["id"])[0]["status"] == "completed" for j in jobs)
    ran = [sum(w.client.get(f"/jobs/{j['id']}").status_code == 200 for j in jobs) for w in pair]
    assert sum(ran) == 20, ran
    assert min(ran) > 0, ran
    assert settled(client)
    consumers = [w.client.get("/ready").json()["queue"]["consumer_id"] for w in pair]
    assert len(set(consumers)) == 2


def test_redis_restarted_mid_run_loses_nothing(pair, redis_server, module_receiver):
    client = redis_server.client()
    jobs = [small_job(100 + i, steps=4) for i in range(6)]
    for job in jobs:
        rpush(client, job, QUEUE)
    wait_all(module_receiver, [jobs[0]["id"]])
    redis_server.restart(down_s=1.5)  # SIGKILL: only what the append-only file holds survives, as on a hosted Redis
    wait_all(module_receiver, [j["id"] for j in jobs])
    time.sleep(0.5)
    assert all(len(module_receiver.terminal(j["id"])) == 1 for j in jobs)
    assert {module_receiver.terminal(j["id"])[0]["status"] for j in jobs} == {"completed"}
    assert settled(redis_server.client())
    states = [w.client.get("/ready").json()["queue"] for w in pair]
    assert all(s["connected"] for s in states)
    assert sum(s["reconnects"] for s in states) >= 1, states


def test_sigkill_mid_job_one_terminal_callback_and_the_rest_complete(tmp_path, placeholder_dir, redis_server,
                                                                      module_receiver):
    client, queue = redis_server.client(), "killed_worker_queue"  # not the pair's: they would take these jobs
    env = env_for(tmp_path, placeholder_dir, redis_server.url, module_receiver.url, "killed", queue)
    worker = WorkerProcess("sdxl", env).start()
    long_job = small_job(200, steps=60, images=6)
    behind = [small_job(201 + i) for i in range(3)]
    try:
        rpush(client, long_job, queue)
        for job in behind:
            rpush(client, job, queue)
        def stepped():
            record = worker.client.get(f"/jobs/{long_job['id']}")
            return record.status_code == 200 and record.json()["progress"].get("step", 0) >= 1 and record.json()
        record = wait_until(stepped, 120, "the long job's first step")
        assert record["status"] == "processing", record
        worker.stop(signal.SIGKILL)
        assert not module_receiver.terminal(long_job["id"])
        worker = WorkerProcess("sdxl", env).start()  # same journal, same consumer id
        wait_all(module_receiver, [long_job["id"], *(j["id"] for j in behind)])
        time.sleep(1.0)
        [ended] = module_receiver.terminal(long_job["id"])
        assert ended["status"] == "failed"
        assert ended["metadata"]["error_type"] == "worker_restarted"
        for job in behind:
            [done] = module_receiver.terminal(job["id"])
            assert done["status"] == "completed"
        assert settled(client, queue)
    finally:
        worker.stop()


def test_ready_reports_redis_down_and_http_keeps_serving(tmp_path, placeholder_dir, module_receiver):
    with RedisServer() as server:
        env = env_for(tmp_path, placeholder_dir, server.url, module_receiver.url, "outage")
        with WorkerProcess("sdxl", env) as worker:
            server.stop()
            poll_until(lambda: not worker.client.get("/ready").json()["queue"]["connected"], 20)
            ready = worker.client.get("/ready")
            assert ready.status_code == 200
            queue = ready.json()["queue"]
            assert queue["connected"] is False
            assert queue["last_error"]
            assert queue["disconnected_since"]
            answer = worker.client.post("/generate?wait=120", json={"type": "sdxl_image_fast", "prompt": "a fox",
                                                                     "config": {"steps": 2}})
            assert answer.status_code == 200
            assert answer.json()["status"] == "completed"
            server.start()
            poll_until(lambda: worker.client.get("/ready").json()["queue"]["connected"], 30)
            assert worker.client.get("/ready").json()["queue"]["connected"]
    with pytest.raises(requests.RequestException):
        requests.get(worker.url + "/health", timeout=1)
