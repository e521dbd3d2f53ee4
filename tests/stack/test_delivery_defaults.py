"""Defaults that cannot lose every result (issue 17 item 7), with real processes against
tests/supabase_standin.py: production without JOB_CALLBACK_SECRET does not start; callbacks the receiver
answers 401 are retried and shown on /ready and in the metrics until it accepts them; a bucket that
refuses application/json (as the app's workspace-temp does) never fails a job over its provenance sidecar."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import requests

from configuration.settings import Settings, SettingsError
from tests.supabase_standin import CALLBACK_SECRET, SERVICE_KEY, SupabaseStandIn
from tests.support import REPO, WorkerProcess, base_env, free_port

pytestmark = pytest.mark.timeout(300)

JOB = {"type": "sdxl_image_fast", "prompt": "a lighthouse at dusk", "user_id": "u1", "config": {"seed": 3}}


def _production_env(tmp_path, placeholder_dir, **extra) -> dict:
    env = base_env(tmp_path, placeholder_dir, MODEL_PROFILE="production", ORCHESTRATOR_PORT=free_port(),
                   SDXL_PORT=free_port(), ENABLED_WORKERS="sdxl", **extra)
    env.pop("JOB_CALLBACK_SECRET", None)
    return env


@pytest.mark.parametrize("configured", ["queue", "callbacks"])
def test_production_without_the_callback_secret_refuses_to_start(tmp_path, placeholder_dir, configured):
    extra = ({"REDIS_URL": f"redis://127.0.0.1:{free_port()}"} if configured == "queue"
             else {"SUPABASE_URL": "https://project.supabase.co", "SUPABASE_SERVICE_KEY": SERVICE_KEY})
    env = _production_env(tmp_path, placeholder_dir, **extra)
    for command in ([sys.executable, "-m", "orchestrator"], [sys.executable, "-m", "configuration.check"]):
        result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        said = result.stdout + result.stderr
        assert result.returncode == 2, (command, result.returncode, said[-3000:])
        assert "needs JOB_CALLBACK_SECRET" in said, said[-3000:]
        assert "refusing to start" in said, said[-3000:]
    # the same settings with the secret pass this check (and a placeholder pod needs none)
    Settings.from_env({**env, "JOB_CALLBACK_SECRET": CALLBACK_SECRET})
    Settings.from_env({**env, "MODEL_PROFILE": "placeholder"})
    with pytest.raises(SettingsError, match="needs JOB_CALLBACK_SECRET"):
        Settings.from_env({**env, "CALLBACK_URL": "https://receiver.example.com/cb"})


def test_a_production_worker_started_alone_refuses_too(tmp_path, placeholder_dir):
    """gunicorn's worker app reads the same settings: without the secret it never boots."""
    env = _production_env(tmp_path, placeholder_dir, REDIS_URL=f"redis://127.0.0.1:{free_port()}")
    command = WorkerProcess("sdxl", base_env(tmp_path, placeholder_dir)).command
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    said = result.stdout + result.stderr
    assert result.returncode != 0, (result.returncode, said[-3000:])
    assert "needs JOB_CALLBACK_SECRET" in said, (result.returncode, said[-3000:])


def test_provenance_sidecar_default_follows_the_storage_backend():
    assert Settings(storage_backend="local").stores_provenance_sidecar
    assert not Settings(storage_backend="supabase").stores_provenance_sidecar
    assert Settings(storage_backend="supabase", provenance_sidecar=True).stores_provenance_sidecar
    assert not Settings(storage_backend="local", provenance_sidecar=False).stores_provenance_sidecar


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    assert found, f"{name} not in the metrics"
    return float(found.group(1))


@pytest.fixture(scope="module")
def pod_against_the_app(tmp_path_factory, placeholder_dir):
    """An SDXL worker storing into a bucket that allows images and video only (the app's workspace-temp),
    asked to store sidecars (PROVENANCE_SIDECAR=1), its callbacks going to the stand-in's job-callback."""
    tmp = tmp_path_factory.mktemp("defaults")
    standin = SupabaseStandIn()
    env = base_env(tmp, placeholder_dir, STORAGE_BACKEND="supabase", SUPABASE_URL=standin.url,
                   SUPABASE_SERVICE_KEY=SERVICE_KEY, JOB_CALLBACK_SECRET=CALLBACK_SECRET, PROVENANCE_SIDECAR="1",
                   CALLBACK_BACKOFF_S="0.2", CALLBACK_BACKOFF_MAX_S="0.5")
    worker = WorkerProcess("sdxl", env).start()
    yield worker, standin
    worker.stop()
    standin.close()


def test_a_refused_callback_is_retried_and_shown_until_the_receiver_accepts_it(pod_against_the_app):
    worker, standin = pod_against_the_app
    standin.callback_secret = "the-apps-other-secret"  # the app holds a different JOB_CALLBACK_SECRET: 401
    assert "warnings" not in worker.client.get("/ready").json()
    reply = worker.client.post("/generate", json={**JOB, "id": "refused-1"})
    assert reply.status_code == 202, reply.text
    assert standin.wait_for(lambda: len([c for c in standin.callbacks("refused-1") if c["status"] == 401]) >= 3, 120)
    ready = worker.client.get("/ready")
    assert ready.status_code == 200, ready.text  # a warning, readiness not failed
    [warning] = ready.json()["warnings"]
    assert warning["message"] == "callbacks refused by the receiver: check JOB_CALLBACK_SECRET"
    assert warning["status"] == 401
    assert warning["refused_attempts"] >= 3
    assert requests.get(worker.url + "/ready", timeout=10).json().get("warnings")  # also without the key
    metrics = worker.client.get("/metrics").text
    assert _metric(metrics, "ourvidz_callbacks_refused_by_receiver") == 1.0
    assert _metric(metrics, "ourvidz_callbacks_refused_total") >= 3
    record = worker.client.get("/jobs/refused-1").json()
    assert record["status"] == "completed", record["callback"]
    assert record["callback"]["status"] == "pending", record["callback"]
    summary = worker.client.get("/ops/summary").json()["callbacks"]
    assert summary["warning"]["message"] == warning["message"]
    assert summary["pending"] == 1
    # the operator fixes the secret: the next retry is delivered, within the normal horizon
    standin.callback_secret = CALLBACK_SECRET
    assert standin.wait_for(lambda: standin.terminal_callbacks("refused-1"), 30)
    assert worker.client.wait_job("refused-1")["callback"]["status"] == "delivered"
    assert standin.wait_for(lambda: "warnings" not in worker.client.get("/ready").json(), 10)
    assert _metric(worker.client.get("/metrics").text, "ourvidz_callbacks_refused_by_receiver") == 0.0


def test_a_bucket_refusing_json_does_not_fail_jobs(pod_against_the_app):
    worker, standin = pod_against_the_app
    standin.callback_secret = CALLBACK_SECRET
    reply = worker.client.post("/generate", json={**JOB, "id": "nojson-1", "config": {"seed": 5, "num_images": 3}})
    assert reply.status_code == 202, reply.text
    record = worker.client.wait_job("nojson-1")
    assert record["status"] == "completed", record
    assert len(record["assets"]) == 3
    for i, asset in enumerate(record["assets"]):
        assert asset["url"] == f"u1/nojson-1/{i}.png"
        assert asset["provenance_url"] is None
        assert asset["metadata"]["provenance"]["job_id"] == "nojson-1"  # the provenance stays in the metadata
        assert ("workspace-temp", asset["url"]) in standin.objects
        assert ("workspace-temp", asset["thumbnail_url"]) in standin.objects
    refused = [r for r in standin.requests if "/nojson-1/" in r["path"] and r["path"].endswith(".json")
               and r["status"] == 415]
    assert len(refused) == 3
    assert not any(k[1].endswith(".json") for k in standin.objects)
    [callback] = standin.wait_for(lambda: standin.terminal_callbacks("nojson-1"), 30)
    assert callback["body"]["status"] == "completed"
    assert len(callback["body"]["assets"]) == 3
    assert "provenance sidecar 0.json not stored" in worker.log()


def test_a_403_is_retried_like_a_401_and_a_400_stays_final():
    from common.callbacks import REFUSED_WARNING, CallbackSender
    from tests.support import CallbackReceiver

    receiver = CallbackReceiver(status=403)
    try:
        sender = CallbackSender(Settings(callback_url=receiver.url, callback_backoff_s=0.05,
                                         callback_backoff_max_s=0.1))
        results: list[tuple[bool, int]] = []
        sender.send({"job_id": "forbidden-1", "status": "completed"}, on_result=lambda ok, n: results.append((ok, n)))
        assert receiver.wait_for(4, "forbidden-1", timeout_s=30)
        stats = sender.stats()
        assert stats["pending"] == 1
        assert stats["abandoned"] == 0
        assert stats["refused"] >= 3
        assert stats["warning"]["message"] == REFUSED_WARNING
        assert stats["warning"]["status"] == 403
        receiver.status = 200
        assert sender.flush(30)
        assert results
        assert results[0][0] is True
        assert sender.stats()["warning"] is None
        receiver.status = 400  # a malformed callback is not fixed by waiting: given up at once
        sender.send({"job_id": "bad-1", "status": "completed"}, on_result=lambda ok, n: results.append((ok, n)))
        assert sender.flush(30)
        assert results[-1] == (False, 1)
        assert sender.stats()["warning"] is None
    finally:
        receiver.close()
