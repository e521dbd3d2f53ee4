"""Bounded metric labels on a running worker (issue 19): a queued entry's `type` became a label of the
job it was refused as, and 1,950 junk types took `/metrics` from 36 KB to 1.09 MB, never expiring. Here
200 junk types arrive through the Redis queue (a real redis-server, the SDXL worker under gunicorn) and
200 more over HTTP; the series they add are counted."""
from __future__ import annotations

import json
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.app_client import queue_job_payload
from tests.redis_support import RedisServer
from tests.support import API_KEY, CallbackReceiver, WorkerProcess, base_env

pytestmark = pytest.mark.timeout(300)

QUEUE = "labels_sdxl_queue"
JUNK = [f"junk-type-{i}-{'x' * (i % 7)}" for i in range(200)]


def series(url: str) -> tuple[set, int]:
    """(label sets of the ourvidz_ series, a histogram's buckets counted once; body size in bytes)."""
    r = requests.get(url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert r.status_code == 200
    found = {(f.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "le")))
             for f in text_string_to_metric_families(r.text) if f.name.startswith("ourvidz_") for s in f.samples}
    return found, len(r.content)


def failed_jobs(url: str) -> float:
    r = requests.get(url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    return sum(s.value for f in text_string_to_metric_families(r.text) if f.name == "ourvidz_jobs_finished"
               for s in f.samples if s.labels.get("status") == "failed")


def test_200_junk_types_through_the_queue_and_http_add_a_handful_of_series(tmp_path, placeholder_dir):
    receiver = CallbackReceiver()
    with RedisServer() as redis_server:
        env = base_env(tmp_path, placeholder_dir, REDIS_URL=redis_server.url, SDXL_QUEUE=QUEUE,
                       CALLBACK_URL=receiver.url, QUEUE_BLOCK_S="0.2")
        worker = WorkerProcess("sdxl", env).start()
        try:
            before, size_before = series(worker.url)
            client = redis_server.client()
            for junk in JUNK:
                payload = queue_job_payload(seed=1)
                payload["type"] = junk
                client.rpush(QUEUE, json.dumps(payload))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and failed_jobs(worker.url) < len(JUNK):
                time.sleep(0.5)
            assert failed_jobs(worker.url) >= len(JUNK), "the junk entries were not all refused"
            refused = [worker.client.post("/generate", json={"type": junk, "prompt": "a fox"}) for junk in JUNK]
            assert {r.status_code for r in refused} == {400}, {r.status_code for r in refused}
            after, size_after = series(worker.url)
        finally:
            worker.stop()
            receiver.close()
    added = after - before
    labels = {dict(labels).get("type") for _name, labels in added}
    print(f"/metrics {size_before} -> {size_after} bytes; {len(added)} series added: {sorted(added)}")
    assert not labels & set(JUNK), "a junk type became a label value"
    assert labels <= {"other", None}, labels
    # jobs submitted/finished/failed and the duration histogram for type "other" (and the queue's own
    # counters, created by the first entry taken): a handful, not one per junk type
    assert len(added) <= 8, sorted(added)
    assert size_after - size_before < 10_000, (size_before, size_after)
