"""The SDXL worker end to end under gunicorn, as the pod runs it: HTTP in, PNG on disk, one callback."""
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.support import API_KEY, CallbackReceiver, WorkerProcess, base_env

JOB = {"id": "j1", "type": "sdxl_image_fast", "prompt": "a red fox", "user_id": "u1", "config": {"seed": 7}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, placeholder_dir):
    tmp = tmp_path_factory.mktemp("sdxl")
    receiver = CallbackReceiver()
    env = base_env(tmp, placeholder_dir, CALLBACK_URL=receiver.url, MAX_BODY_MB="1")
    worker = WorkerProcess("sdxl", env).start()
    yield worker, receiver, Path(env["OUTPUT_DIR"])
    worker.stop()
    receiver.close()


def test_text_to_image_end_to_end(stack):
    worker, receiver, out = stack
    reply = worker.client.post("/generate", json=JOB)
    assert reply.status_code == 202, reply.text
    assert reply.json() == {"job_id": "j1", "status": "queued", "status_url": "/jobs/j1", "duplicate": False,
                            "request_id": reply.headers["X-Request-ID"]}
    record = worker.client.wait_job("j1")
    assert record["status"] == "completed", record
    [asset] = record["assets"]
    assert asset["type"] == "image"
    assert asset["url"] == "u1/j1/0.png"
    assert asset["thumbnail_url"] == "u1/j1/0.thumb.webp"
    png = Image.open(out / "u1/j1/0.png")
    assert png.format == "PNG"
    assert png.size == (64, 64)
    thumb = Image.open(out / "u1/j1/0.thumb.webp")
    assert thumb.format == "WEBP"
    assert max(thumb.size) <= 256
    meta = asset["metadata"]
    assert (meta["width"], meta["height"], meta["seed"], meta["steps"], meta["guidance_scale"]) == (64, 64, 7, 15, 6.0)
    assert meta["file_size_bytes"] == (out / "u1/j1/0.png").stat().st_size
    assert record["metadata"]["original_prompt"] == "a red fox"
    callbacks = receiver.wait_for(1, "j1")
    time.sleep(0.5)
    callbacks = receiver.bodies("j1")
    assert len(callbacks) == 1
    assert callbacks[0]["status"] == "completed"
    assert callbacks[0]["assets"] == record["assets"]
    assert callbacks[0]["error_message"] is None


def test_same_seed_same_bytes_and_seed_zero_is_a_seed(stack):
    worker, _, out = stack
    for job_id, seed in (("d1", 0), ("d2", 0), ("d3", 1)):
        r = worker.client.post("/generate?wait=120", json={**JOB, "id": job_id, "config": {"seed": seed}})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "completed", r.text
    d1, d2, d3 = ((out / f"u1/{j}/0.png").read_bytes() for j in ("d1", "d2", "d3"))
    assert d1 == d2
    assert d1 != d3
    assert worker.client.get("/jobs/d1").json()["assets"][0]["metadata"]["seed"] == 0


def test_repeated_id_returns_first_job_and_runs_nothing(stack):
    worker, receiver, _ = stack
    first = worker.client.post("/generate?wait=120", json={**JOB, "id": "rep"}).json()
    again = worker.client.post("/generate", json={**JOB, "id": "rep", "prompt": "something else"})
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert again.json()["status"] == "completed"
    assert worker.client.get("/jobs/rep").json()["created_at"] == first["created_at"]
    time.sleep(0.3)
    assert len(receiver.bodies("rep")) == 1


@pytest.mark.parametrize(("job", "path"), [
    ({k: v for k, v in JOB.items() if k != "prompt"}, "/prompt"),
    ({**JOB, "config": {"steps": 1000}}, "/config/steps"),
    ({**JOB, "type": "sdxl_image_ultra"}, "/type"),
    ({**JOB, "config": {"num_images": "3"}}, "/config/num_images"),
    ({**JOB, "prompt": 5}, "/prompt"),
])
def test_bad_input_is_400_with_the_field_path_and_nothing_is_queued(stack, job, path):
    worker, _, _ = stack
    job = {**job, "id": f"bad-{abs(hash(path)) % 10**6}"}
    r = worker.client.post("/generate", json=job)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "validation_error"
    assert path in [d["path"] for d in err["details"]]
    assert worker.client.get(f"/jobs/{job['id']}").status_code == 404
    assert worker.client.get("/health").status_code == 200


def test_non_json_wrong_type_and_oversized_bodies(stack):
    worker, _, _ = stack
    r = worker.client.post("/generate", data="not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_json"
    r = worker.client.post("/generate", json=[1, 2])
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "validation_error"
    r = worker.client.post("/generate", data=b"x" * (2 * 1024 * 1024), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large"
    assert worker.client.get("/ready").status_code == 200


def test_bearer_auth_everywhere_but_health(stack):
    worker, _, _ = stack
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        r = requests.post(worker.url + "/generate", json={**JOB, "id": "noauth"}, headers=headers, timeout=10)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
        assert "traceback" not in r.text.lower()
        assert requests.get(worker.url + "/memory/status", headers=headers, timeout=10).status_code == 401
        assert requests.get(worker.url + "/jobs/j1", headers=headers, timeout=10).status_code == 401
    assert requests.get(worker.url + "/health", timeout=10).status_code == 200
    assert requests.get(worker.url + "/ready", timeout=10).status_code == 200
    assert worker.client.get("/jobs/noauth").status_code == 404


def test_unknown_job_cancel_finished_and_openapi(stack):
    worker, _, _ = stack
    assert worker.client.get("/jobs/nope").status_code == 404
    assert worker.client.post("/jobs/nope/cancel").status_code == 404
    worker.client.post("/generate?wait=120", json={**JOB, "id": "fin"})
    r = worker.client.post("/jobs/fin/cancel")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "job_finished"
    doc = worker.client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    schema = doc["components"]["schemas"]["sdxl_generate"]
    assert schema["properties"]["config"]["properties"]["num_images"] == {"enum": [1, 3, 6]}
    assert "/generate" in doc["paths"]
    assert "/memory/unload" in doc["paths"]
    assert [p["name"] for p in doc["paths"]["/generate"]["post"]["parameters"]] == ["wait", "dry_run"]


def test_memory_status_unload_and_load(stack):
    worker, _, _ = stack
    worker.client.post("/generate?wait=120", json={**JOB, "id": "mem"})
    status = worker.client.get("/memory/status").json()
    assert status["models"]["sdxl"]["loaded"]
    assert status["models"]["sdxl"]["resident_bytes"] > 100_000
    resident = status["models"]["sdxl"]["resident_bytes"]
    r = worker.client.post("/memory/unload", json={"which": "sdxl"})
    assert r.status_code == 200
    assert r.json()["models"]["sdxl"]["resident_bytes"] == 0
    assert r.json()["model_loaded"] is False
    r = worker.client.post("/memory/load?which=sdxl")
    assert r.status_code == 200
    assert r.json()["models"]["sdxl"]["resident_bytes"] == resident
    r = worker.client.post("/memory/load", json={"which": "nope"})
    assert r.status_code == 400
    assert r.json()["error"]["details"][0]["path"] == "/which"
    r = worker.client.post("/memory/load", json={"which": "sdxl", "wait_s": 5})
    assert r.status_code == 400
    assert r.json()["error"]["details"][0]["path"] == "/wait_s"


def test_cancel_a_queued_job(stack):
    worker, receiver, _ = stack
    long_job = {**JOB, "id": "long", "config": {"seed": 1, "steps": 100, "num_images": 6}}
    worker.client.post("/generate", json=long_job)
    worker.client.post("/generate", json={**JOB, "id": "behind"})
    assert worker.client.post("/jobs/behind/cancel").json()["status"] == "cancelled"
    worker.client.post("/jobs/long/cancel")
    assert worker.client.wait_job("long")["status"] == "cancelled"
    assert worker.client.get("/jobs/behind").json()["started_at"] is None
    assert [b["status"] for b in receiver.wait_for(1, "behind")] == ["cancelled"]


def test_sigterm_lets_the_running_job_finish_then_exits(tmp_path, placeholder_dir):
    import json
    import signal
    receiver = CallbackReceiver()
    # a grace far above the job's length even on a loaded machine (it once ran past 60 s there): the test is
    # about finishing inside the grace, not about how long the grace is
    env = base_env(tmp_path, placeholder_dir, CALLBACK_URL=receiver.url, SHUTDOWN_GRACE_S="240")
    worker = WorkerProcess("sdxl", env).start()
    try:
        worker.client.post("/generate", json={**JOB, "id": "term", "config": {"seed": 1, "steps": 40, "num_images": 3}})
        worker.client.wait_job("term", statuses=("processing",))
        assert worker.stop(signal.SIGTERM, timeout_s=300) == 0
        journal = json.loads((tmp_path / "outputs" / ".jobs" / "sdxl" / "term.json").read_text())
        assert journal["status"] == "completed"
        assert len(journal["assets"]) == 3
        assert [b["status"] for b in receiver.wait_for(1, "term")] == ["completed"]
        # the worker process ends itself once the job and its callback are settled (workers/gunicorn_conf.py,
        # worker_exit): its last line is in the log, and its master saw it exit with status 0
        log = worker.log()
        assert "stopped cleanly; exiting with status 0" in log, log
        assert "exited with code" not in log, log
    finally:
        worker.stop(signal.SIGKILL)
        receiver.close()
