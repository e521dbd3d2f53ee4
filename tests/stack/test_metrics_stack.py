"""Observability of a running pod (orchestrator + SDXL, WAN and chat workers, real processes, placeholder
models): each process's `GET /metrics` after real jobs, parsed with prometheus_client's parser; the JSON
log lines of one job on the orchestrator and its worker (shared job_id and request id, no prompt text);
the provenance sidecar of each asset, its weight hashes recomputed here."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support import API_KEY

pytestmark = pytest.mark.timeout(300)

PROMPT = "a purple giraffe reading the financial times on a unicycle"   # recognisable in any log line
REQUEST_ID = "req-observability-1"


@pytest.fixture(scope="module")
def pod(redis_server, start_pod):  # Redis up until the pod has stopped
    process = start_pod("observed-pod", callbacks=True, LOG_FORMAT="json", REDIS_URL=redis_server.url)
    process.redis = redis_server
    return process


@pytest.fixture(scope="module")
def jobs(pod):
    """An enhanced SDXL job and a WAN video through the orchestrator, and a chat request on the chat worker."""
    sdxl = pod.client.post("/jobs?wait=120", headers={"X-Request-ID": REQUEST_ID}, json={
        "type": "sdxl_image_fast", "prompt": PROMPT, "user_id": "u-obs",
        "enhance": {"model": "instruct", "max_tokens": 8, "seed": 1},
        "config": {"seed": 5, "steps": 2}})
    assert sdxl.status_code == 200, sdxl.text
    assert sdxl.json()["status"] == "completed", sdxl.text
    assert sdxl.headers["X-Request-ID"] == REQUEST_ID
    assert sdxl.json()["request_id"] == REQUEST_ID
    wan = pod.client.post("/jobs?wait=120", json={"type": "video_fast", "prompt": "waves on a beach",
                                                  "user_id": "u-obs", "config": {"seed": 3, "steps": 2}})
    assert wan.status_code == 200, wan.text
    assert wan.json()["status"] == "completed", wan.text
    chat = requests.post(f"http://127.0.0.1:{pod.ports['chat']}/chat", timeout=60,
                         headers={"Authorization": f"Bearer {API_KEY}"},
                         json={"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 6, "seed": 2})
    assert chat.status_code == 200, chat.text
    return {"sdxl": sdxl.json(), "wan": wan.json()}


def scrape(url: str) -> dict:
    response = requests.get(url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: dict = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def value(samples: dict, name: str, **labels) -> float:
    found = [v for lab, v in samples.get(name, []) if all(lab.get(k) == str(x) for k, x in labels.items())]
    assert found, f"no sample {name} {labels}; have {sorted(samples)[:80]}"
    return sum(found)


def test_metrics_need_the_key(pod):
    assert requests.get(pod.url + "/metrics", timeout=5).status_code == 401
    assert requests.get(f"http://127.0.0.1:{pod.ports['sdxl']}/metrics", timeout=5).status_code == 401


def test_every_process_counts_the_jobs_it_ran(pod, jobs):
    sdxl = scrape(f"http://127.0.0.1:{pod.ports['sdxl']}")
    assert value(sdxl, "ourvidz_jobs_submitted_total", worker="sdxl", type="sdxl_image_fast") >= 1
    assert value(sdxl, "ourvidz_jobs_finished_total", worker="sdxl", type="sdxl_image_fast", status="completed") >= 1
    assert value(sdxl, "ourvidz_job_duration_seconds_count", worker="sdxl", status="completed") >= 1
    assert value(sdxl, "ourvidz_job_duration_seconds_sum", worker="sdxl", status="completed") > 0
    for stage in ("queue_wait", "loading", "generating", "encoding", "storing"):
        assert value(sdxl, "ourvidz_job_stage_duration_seconds_count", worker="sdxl", stage=stage) >= 1, stage
    assert value(sdxl, "ourvidz_model_loads_total", worker="sdxl", model="sdxl") == 1
    assert value(sdxl, "ourvidz_model_resident_bytes", model="sdxl") > 0
    assert value(sdxl, "process_start_time_seconds") > 0
    assert value(sdxl, "ourvidz_build_info", process="sdxl", model_profile="placeholder") == 1

    wan = scrape(f"http://127.0.0.1:{pod.ports['wan']}")
    assert value(wan, "ourvidz_jobs_finished_total", worker="wan", status="completed") >= 1
    assert value(wan, "ourvidz_job_stage_duration_seconds_count", worker="wan", stage="generating") >= 1

    chat = scrape(f"http://127.0.0.1:{pod.ports['chat']}")
    assert value(chat, "ourvidz_chat_requests_total", kind="chat") >= 1
    assert value(chat, "ourvidz_chat_requests_total", kind="enhance") >= 1
    assert value(chat, "ourvidz_chat_completion_tokens_total") >= 2
    assert value(chat, "ourvidz_chat_prompt_tokens_total") > 0
    assert value(chat, "ourvidz_chat_time_to_first_token_seconds_count") >= 2
    assert value(chat, "ourvidz_chat_batch_size_count") >= 2
    assert value(chat, "ourvidz_chat_generation_tokens_per_second_count") >= 2

    orchestrator = scrape(pod.url)
    assert value(orchestrator, "ourvidz_jobs_submitted_total", worker="sdxl", type="sdxl_image_fast") >= 1
    assert value(orchestrator, "ourvidz_jobs_finished_total", worker="sdxl", status="completed") >= 1
    assert value(orchestrator, "ourvidz_jobs_finished_total", worker="wan", status="completed") >= 1
    assert value(orchestrator, "ourvidz_job_duration_seconds_count", worker="sdxl") >= 1
    assert value(orchestrator, "ourvidz_job_stage_duration_seconds_count", worker="sdxl", stage="enhancing") >= 1
    for worker in ("sdxl", "wan", "chat"):
        assert value(orchestrator, "ourvidz_worker_state", worker=worker, ourvidz_worker_state="ready") == 1
        assert value(orchestrator, "ourvidz_worker_ready", worker=worker) == 1
        assert value(orchestrator, "ourvidz_worker_restarts_total", worker=worker) == 0
    assert value(orchestrator, "ourvidz_device_memory_total_bytes", device="0") > 0
    assert value(orchestrator, "ourvidz_memory_budget_bytes", device="0") > 0
    assert value(orchestrator, "ourvidz_memory_leased_bytes", worker="sdxl", model="sdxl") > 0
    assert value(orchestrator, "ourvidz_memory_leased_bytes", worker="wan", model="wan_vace") == 0
    assert value(orchestrator, "ourvidz_callbacks_delivered_total") >= 2
    assert value(orchestrator, "ourvidz_callbacks_pending") == 0


def log_lines(pod) -> list[dict]:
    """Every line of the pod's output (orchestrator and workers write to it): each must be one JSON object."""
    lines = []
    for number, line in enumerate(pod.log_path.read_text().splitlines(), 1):
        try:
            parsed = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} of the pod's log is not JSON: {line[:300]}") from None
        assert isinstance(parsed, dict), line
        lines.append(parsed)
    return lines


def test_a_jobs_log_lines_share_its_id_and_request_id_on_orchestrator_and_worker(pod, jobs):
    job_id = jobs["sdxl"]["job_id"]
    mine = [line for line in log_lines(pod) if line.get("job_id") == job_id]
    by_process = {line["process"] for line in mine}
    assert {"orchestrator", "sdxl"} <= by_process, by_process
    assert {line["request_id"] for line in mine} == {REQUEST_ID}
    stages = {line["stage"] for line in mine if line["process"] == "sdxl"}
    assert {"queued", "generating"} <= stages, stages
    chat = [line for line in log_lines(pod) if line["process"] == "chat" and line.get("request_id") == REQUEST_ID]
    assert chat, "the enhancement request on the chat worker carries the job's request id"


def test_no_prompt_text_in_any_log_line_at_info_or_above(pod, jobs):
    enhanced = jobs["sdxl"]["metadata"]["enhanced_prompt"]
    secrets = [PROMPT, "purple giraffe", enhanced]
    for line in log_lines(pod):
        if line["level"] in ("INFO", "WARNING", "ERROR", "CRITICAL"):
            text = json.dumps(line)
            for secret in secrets:
                assert secret not in text, f"prompt text in a log line: {text[:300]}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_asset_has_a_provenance_sidecar_with_the_weights_it_was_made_with(pod, jobs, placeholder_dir):
    for worker, record in jobs.items():
        for asset in record["assets"]:
            sidecar_path = pod.output_dir / asset["provenance_url"]
            assert sidecar_path.name == f"{asset['metadata']['asset_index']}.json"
            sidecar = json.loads(sidecar_path.read_text())
            assert sidecar == asset["metadata"]["provenance"]
            assert sidecar["job_id"] == record["job_id"]
            assert sidecar["worker"] == worker
            assert sidecar["pipeline_class"] in ("StableDiffusionXLPipeline", "WanPipeline", "WanVACEPipeline")
            assert sidecar["scheduler"]["class"]
            assert sidecar["scheduler"]["config"]
            assert sidecar["seed"] == asset["metadata"]["seed"]
            assert sidecar["device"] == "cpu"
            assert sidecar["dtype"] == "float32"
            assert sidecar["profile"] == "placeholder"
            assert set(sidecar["versions"]) == {"torch", "diffusers", "transformers"}
            assert {"queue_wait", "loading", "generating", "encoding"} <= set(sidecar["timings_s"])
            assert sidecar["parameters"]["requested"]["seed"] == record["metadata"]["parameters"]["seed"]
            for model in sidecar["models"]:
                root = Path(model["path"])
                assert placeholder_dir in root.parents
                for entry in model["files"]:
                    assert _sha256(root / entry["file"]) == entry["sha256"], entry["file"]
                recomputed = [p for p in root.rglob("*.safetensors")
                              if not any(x.startswith(".") for x in p.relative_to(root).parts)]
                assert sorted(e["file"] for e in model["files"]) == sorted(p.relative_to(root).as_posix()
                                                                          for p in recomputed)


def test_queue_intake_metrics_and_the_ops_state_show_the_redis_queues(pod):
    """An unusable entry pushed the way the app pushes (RPUSH) is taken and dead-lettered: counted on the
    consumer (the SDXL worker) and listed by the orchestrator's ops state."""
    pod.redis.client().rpush("sdxl_queue", b"not json at all")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not pod.redis.client().llen("sdxl_queue:dead"):
        time.sleep(0.05)
    sdxl = scrape(f"http://127.0.0.1:{pod.ports['sdxl']}")
    assert value(sdxl, "ourvidz_queue_entries_taken_total", queue="sdxl_queue") >= 1
    assert value(sdxl, "ourvidz_queue_dead_letters_total", queue="sdxl_queue") == 1
    assert value(sdxl, "ourvidz_queue_depth", queue="sdxl_queue") == 0
    assert value(sdxl, "ourvidz_queue_in_flight", queue="sdxl_queue") == 0
    wan = scrape(f"http://127.0.0.1:{pod.ports['wan']}")
    assert value(wan, "ourvidz_queue_depth", queue="wan_queue") == 0
    state = pod.client.get("/ops/state").json()
    queues = {q["name"]: q for q in state["queues"]}
    assert set(queues) == {"sdxl_queue", "wan_queue"}
    assert queues["sdxl_queue"]["dead_letters"] == 1
    assert queues["sdxl_queue"]["consumers_alive"] == 1
