"""Issue 11 against a running pod (the orchestrator and its three workers, real processes on free ports):
strict JSON on every route of every process, NaN/Infinity and lone surrogates refused, bodies and
methods answered by the contract, the broker closed to key holders, job ids scoped per user and one
job per id across the pod, a dripping reference outside the executor, retention, and `?wait` that
leaves the broker and /health their threads.

Each test reproduces one finding of the attack run (issue 11) against the code before the fix."""
from __future__ import annotations

import json
import multiprocessing
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests

from tests.support import API_KEY, Client
from tests.unit.test_hardening_fetch import DripServer

pytestmark = pytest.mark.timeout(300)

FETCH_TIMEOUT_S = 3.0
OLD = (datetime.now(UTC) - timedelta(days=400)).isoformat(timespec="milliseconds")


def _old_record(job_id: str) -> dict:
    """A journal entry of a job that ended 400 days ago (the journal's on-disk form)."""
    return {"job_id": job_id, "type": "sdxl_image_fast", "user_id": "u-old", "status": "completed",
            "progress": {"stage": "storing", "step": 1, "total_steps": 1, "percent": 100.0}, "assets": [],
            "error": None, "metadata": {}, "created_at": OLD, "started_at": OLD, "finished_at": OLD,
            "callback": {"status": "delivered", "attempts": 1}, "params": {}, "send_callback": True}


@pytest.fixture(scope="module")
def pod(start_pod, tmp_path_factory):
    state = tmp_path_factory.mktemp("hardening-state")
    for process in ("sdxl", "orchestrator"):
        (state / process).mkdir(parents=True)
        (state / process / f"old-{process}.json").write_text(json.dumps(_old_record(f"old-{process}")))
    orchestrator = start_pod("hardening", callbacks=True, STATE_DIR=state, FETCH_TIMEOUT_S=FETCH_TIMEOUT_S,
                             LEASE_TIMEOUT_S=60)
    orchestrator.worker_clients = {name: Client(info["url"], API_KEY) for name, info in orchestrator.workers().items()}
    return orchestrator


@pytest.fixture(scope="module")
def receiver(pod):
    return pod.receiver


def clients(pod) -> dict[str, Client]:
    return {"orchestrator": pod.client, **pod.worker_clients}


JSON_ROUTES = {
    "orchestrator": ["/jobs", "/memory/load", "/memory/unload"],
    "sdxl": ["/generate", "/memory/load", "/memory/unload"],
    "wan": ["/generate", "/memory/load", "/memory/unload"],
    "chat": ["/enhance/base", "/enhance/instruct", "/enhance", "/chat", "/generate", "/v1/chat/completions",
             "/memory/load", "/memory/unload"],
}

BAD_BODIES = {
    "latin-1 bytes": b'{"prompt": "caf\xe9"}',
    "invalid utf-8": b'{"prompt": "\xff\xfe\xfd"}',
    "utf-16": '{"prompt": "x"}'.encode("utf-16"),
    "5000-digit integer": b'{"seed": ' + b"7" * 5000 + b"}",
    "10000-deep array": b"[" * 10000 + b"]" * 10000,
    "10000-deep object": b'{"a":' * 10000 + b"1" + b"}" * 10000,
    "NaN": b'{"prompt": "x", "seed": NaN}',
    "Infinity": b'{"prompt": "x", "seed": Infinity}',
    "-Infinity": b'{"prompt": "x", "seed": -Infinity}',
    "lone surrogate": b'{"prompt": "\\ud800 cat"}',
    "huge exponent": b'{"seed": 1e999999}',
}


@pytest.mark.parametrize("process", list(JSON_ROUTES))
def test_bad_bytes_are_400_with_the_reason_on_every_json_route(pod, process):
    client = clients(pod)[process]
    wrong = []
    for route in JSON_ROUTES[process]:
        for name, body in BAD_BODIES.items():
            r = client.post(route, data=body, headers={"Content-Type": "application/json"}, timeout=30)
            try:
                error = r.json()["error"]
            except (ValueError, KeyError, TypeError):
                error = {}
            if r.status_code != 400 or error.get("code") != "invalid_json" or not error.get("message"):
                wrong.append(f"{route} {name}: HTTP {r.status_code} {r.text[:120]!r}")
    assert not wrong, "\n".join(wrong)
    assert client.get("/ready").status_code == 200


def test_client_mistakes_leave_no_traceback_in_the_log(pod):
    test_bad_bytes_are_400_with_the_reason_on_every_json_route(pod, "orchestrator")
    test_bad_bytes_are_400_with_the_reason_on_every_json_route(pod, "sdxl")
    log = pod.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[log.find("Traceback") - 500:][:3000]


SDXL = {"type": "sdxl_image_fast", "prompt": "a red fox", "config": {"steps": 1, "width": 32, "height": 32}}


@pytest.mark.parametrize(("process", "route"), [("sdxl", "/generate"), ("orchestrator", "/jobs")])
@pytest.mark.parametrize(("where", "value"), [("guidance", "NaN"), ("guidance", "Infinity"), ("metadata", "NaN"),
                                         ("metadata", "-Infinity")])
def test_nan_and_infinity_in_parameters_and_metadata_are_refused(pod, process, route, where, value):
    if where == "guidance":
        text = json.dumps(SDXL)[:-2] + f', "guidance_scale": {value}}}}}'
    else:
        text = json.dumps(SDXL)[:-1] + f', "metadata": {{"mine": {value}}}}}'
    json.loads(text)  # Python itself reads it: the server must not
    r = clients(pod)[process].post(route, data=text, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(("process", "route", "body"), [
    ("sdxl", "/generate", {**SDXL, "prompt": "\ud800 a fox"}),
    ("orchestrator", "/jobs", {**SDXL, "prompt": "a fox \udfff"}),
    ("chat", "/chat", {"messages": [{"role": "user", "content": "hi \ud83d"}]}),
])
def test_a_lone_surrogate_is_a_400_not_an_internal_error(pod, process, route, body):
    text = json.dumps(body)  # ensure_ascii: the surrogate travels as \\udXXX
    r = clients(pod)[process].post(route, data=text, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text


@pytest.mark.parametrize("process", list(JSON_ROUTES))
def test_an_oversized_body_is_413_json(pod, process):
    route = JSON_ROUTES[process][0]
    r = clients(pod)[process].post(route, data=b" " * (11 * 1024 * 1024), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text[:200]
    assert r.json()["error"]["code"] == "body_too_large"
    assert clients(pod)[process].get("/ready").status_code == 200


@pytest.mark.parametrize(("process", "method", "route", "allowed"), [
    ("orchestrator", "get", "/jobs", "POST"), ("orchestrator", "delete", "/memory/load", "POST"),
    ("sdxl", "get", "/generate", "POST"), ("wan", "put", "/generate", "POST"),
    ("chat", "get", "/chat", "POST"), ("chat", "post", "/v1/models", "GET"),
])
def test_405_names_the_allowed_methods(pod, process, method, route, allowed):
    client = clients(pod)[process]
    r = client.session.request(method.upper(), client.base_url + route, timeout=10)
    assert r.status_code == 405
    assert allowed in {m.strip() for m in r.headers.get("Allow", "").split(",")}, dict(r.headers)


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(pod, scheme):
    for process, client in clients(pod).items():
        r = requests.get(client.base_url + "/memory/status", headers={"Authorization": f"{scheme} {API_KEY}"},
                         timeout=10)
        assert r.status_code == 200, f"{process}: {r.status_code}"
        r = requests.get(client.base_url + "/memory/status", headers={"Authorization": f"{scheme} wrong"},
                         timeout=10)
        assert r.status_code == 401


@pytest.mark.parametrize("value", ["True", "yes", "on", "TRUE", "2", ""])
def test_dry_run_never_queues_a_job_for_a_value_it_does_not_understand(pod, value):
    client = pod.worker_clients["sdxl"]
    job_id = f"dry-{abs(hash(value))}"
    r = client.post(f"/generate?dry_run={value}", json={**SDXL, "id": job_id})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:
        assert r.json()["valid"] is True
    assert client.get(f"/jobs/{job_id}").status_code == 404, "a real job was queued"


def test_dry_run_on_the_orchestrator_queues_nothing(pod):
    r = pod.client.post("/jobs?dry_run=1", json={**SDXL, "id": "dry-orch"})
    assert r.status_code in (200, 400), r.text
    assert pod.client.get("/jobs/dry-orch").status_code == 404, "a real job was routed"


def test_the_broker_is_closed_to_holders_of_the_public_key(pod):
    """The public bearer key must not reach /broker/* (lease, hello, job_started...)."""
    for action, body in (("touch", {"worker": "sdxl", "models": []}),
                         ("job_finished", {"worker": "wan"}),
                         ("admit", {"worker": "sdxl", "need_bytes": 1})):
        r = pod.client.post(f"/broker/{action}", json=body)
        assert r.status_code in (401, 403, 404), f"/broker/{action}: {r.status_code} {r.text}"


def test_memory_routes_are_described_as_they_are_read(pod):
    """`which` is one of the worker's models or `all`, the body is optional, the query parameters listed."""
    for process, client in pod.worker_clients.items():
        doc = client.get("/openapi.json").json()
        models = set(client.get("/memory/status").json()["models"])
        for route in ("/memory/load", "/memory/unload"):
            op = doc["paths"][route]["post"]
            assert not op.get("requestBody", {}).get("required", False), f"{process} {route} body marked required"
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
            which = doc["components"]["schemas"][ref]["properties"]["which"]
            assert set(which.get("enum", [])) == models | {"all"}, f"{process} {route}: which={which}"
            assert "which" in {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}


# ---- job ids ----------------------------------------------------------------------------------------

def _finished(client: Client, job_id: str) -> dict:
    return client.wait_job(job_id, 60)


@pytest.mark.parametrize("process", ["sdxl", "orchestrator"])
def test_another_users_job_id_is_a_409_and_never_returns_their_job(pod, process):
    client = clients(pod)[process]
    route = "/generate" if process == "sdxl" else "/jobs"
    job_id = f"shared-{process}"
    first = client.post(route, json={**SDXL, "id": job_id, "user_id": "alice", "prompt": "alice's secret prompt"})
    assert first.status_code == 202, first.text
    again = client.post(route, json={**SDXL, "id": job_id, "user_id": "alice", "prompt": "alice's secret prompt"})
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    other = client.post(route, json={**SDXL, "id": job_id, "user_id": "mallory", "prompt": "x"})
    assert other.status_code == 409, other.text
    assert "secret" not in other.text
    assert "alice" not in other.text
    other = client.post(route, json={**SDXL, "id": job_id, "prompt": "x"})  # no user: "anonymous"
    assert other.status_code == 409, other.text
    _finished(client, job_id)


def test_one_job_per_id_across_the_orchestrator_and_the_workers(pod, receiver):
    """Sent to the SDXL worker and to the orchestrator: it runs once, with one callback, for its owner."""
    worker = pod.worker_clients["sdxl"]
    r = worker.post("/generate", json={**SDXL, "id": "both-ways", "user_id": "alice"})
    assert r.status_code == 202, r.text
    other_user = pod.client.post("/jobs", json={**SDXL, "id": "both-ways", "user_id": "mallory"})
    assert other_user.status_code == 409, other_user.text
    same_user = pod.client.post("/jobs", json={**SDXL, "id": "both-ways", "user_id": "alice"})
    assert same_user.status_code in (200, 409), same_user.text
    record = _finished(worker, "both-ways")
    assert record["status"] == "completed"
    receiver.wait_for(1, "both-ways")
    time.sleep(1.5)  # a second callback would come from the orchestrator's poll of the worker
    callbacks = receiver.bodies("both-ways")
    assert len(callbacks) == 1, callbacks
    assert all(a["url"].startswith("alice/") for a in callbacks[0]["assets"])


@pytest.mark.parametrize(("process", "route", "field"), [
    ("sdxl", "/generate", "id"), ("sdxl", "/generate", "user_id"),
    ("wan", "/generate", "id"), ("orchestrator", "/jobs", "id"), ("orchestrator", "/jobs", "user_id"),
])
@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\x00"])
def test_an_id_ending_in_a_newline_is_refused(pod, process, route, field, suffix):
    body = {**SDXL, field: "abc" + suffix}
    if process == "wan":
        body = {"type": "image_fast", "prompt": "a boat", field: "abc" + suffix}
    r = clients(pod)[process].post(route, json=body)
    assert r.status_code == 400, r.text
    assert any(d["path"] == f"/{field}" for d in r.json()["error"]["details"]), r.text


@pytest.mark.parametrize(("process", "route"), [("sdxl", "/generate"), ("orchestrator", "/jobs")])
@pytest.mark.parametrize("url", ["http://a..b/x.png", "http://\u2028x.example/x.png", "http://[::1/x.png",
                                 "http://x.example:99999/x.png"])
def test_an_unusable_reference_host_is_a_400_at_submission(pod, process, route, url):
    r = clients(pod)[process].post(route, json={**SDXL, "metadata": {"reference_image_url": url}})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["details"][0]["path"] == "/metadata/reference_image_url"


# ---- a dripping reference -------------------------------------------------------------------------

def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_a_job_behind_a_dripping_reference_starts_in_time_and_a_cancel_stops_the_fetch(pod):
    worker = pod.worker_clients["sdxl"]
    drip = DripServer(total_bytes=1_000_000, interval_s=0.5, duration_s=20)
    try:
        slow = {**SDXL, "id": "drip-slow", "metadata": {"reference_image_url": drip.url + "/slow.png"}}
        submitted = time.time()
        assert worker.post("/generate", json=slow).status_code == 202
        assert worker.post("/generate", json={**SDXL, "id": "drip-next"}).status_code == 202
        after = worker.wait_job("drip-next", 60)
        assert after["status"] == "completed", after
        waited = _epoch(after["started_at"]) - submitted
        assert waited < FETCH_TIMEOUT_S + 2, f"the job behind the dripping reference started after {waited:.1f}s"
        first = worker.wait_job("drip-slow", 30)
        assert first["status"] == "failed", first
        assert "longer than" in first["error"]["message"], first

        cancelled = {**SDXL, "id": "drip-cancel", "metadata": {"reference_image_url": drip.url + "/cancel.png"}}
        before = drip.requests
        assert worker.post("/generate", json=cancelled).status_code == 202
        deadline = time.monotonic() + 10
        while drip.requests == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert drip.requests > before, "the reference was never requested"
        asked = time.monotonic()
        assert worker.post("/jobs/drip-cancel/cancel").status_code == 200
        record = worker.wait_job("drip-cancel", 30)
        assert record["status"] == "cancelled", record
        assert time.monotonic() - asked < 1.5, "the cancel waited for the fetch to time out"
    finally:
        drip.close()


# ---- retention ------------------------------------------------------------------------------------

@pytest.mark.parametrize("process", ["sdxl", "orchestrator"])
def test_records_past_the_retention_period_are_pruned(pod, process):
    r = clients(pod)[process].get(f"/jobs/old-{process}")
    assert r.status_code == 404, r.text
    assert not (pod.state_dir / process / f"old-{process}.json").exists()


# ---- ?wait must not starve the broker or /health (last: it loads the pod) ----------------------------

def _wait_jobs(url: str, count: int, results) -> None:
    """`count` `POST /jobs?wait=30` at once, each answer (status code, job status) into `results`. Run in a
    process of its own: the /health probe's timings then measure the orchestrator, not the GIL of a test
    process with 60 busy client threads."""
    def wait_job(i: int) -> None:
        try:
            r = requests.post(url + "/jobs?wait=30", json={**SDXL, "id": f"wait-{i}"},
                              headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
            results[i] = (r.status_code, r.json().get("status", ""))
        except requests.RequestException as exc:
            results[i] = (0, type(exc).__name__)

    threads = [threading.Thread(target=wait_job, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)


def test_60_waiting_requests_leave_health_and_the_broker_responsive(pod):
    context = multiprocessing.get_context("spawn")
    results = context.Manager().dict()
    health: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                requests.get(pod.url + "/health", timeout=10)
            except requests.RequestException:
                pass
            health.append(time.monotonic() - started)
            if health[-1] > 0.5:
                print(f"slow probe at {started - began:.1f}s: {health[-1]:.2f}s", flush=True)
            time.sleep(0.2)

    warm = pod.client.post("/jobs?wait=120", json={**SDXL, "id": "wait-warm"})  # a pod in service: model loaded
    assert warm.status_code == 200, warm.text
    assert warm.json()["status"] == "completed", warm.text
    began = time.monotonic()
    prober = threading.Thread(target=probe)
    prober.start()
    clients = context.Process(target=_wait_jobs, args=(pod.url, 60, results))
    clients.start()
    clients.join(120)
    stop.set()
    prober.join()
    # What matters: /health kept answering (it has threads of its own, orchestrator/serving.py), every
    # waiting request was answered, and every job completed (the broker kept granting). How many of the
    # 60 jobs a loaded 2-core machine finishes within the 30 s wait does not: once it failed the test with
    # a job still running when its wait ended (issue 19), so one that is not done yet is followed up.
    assert max(health) < 2.0, f"/health took up to {max(health):.1f}s"
    assert len(results) == 60, dict(results)
    assert {code for code, _ in results.values()} == {200}, dict(results)
    unfinished = [i for i, (_, status) in results.items() if status != "completed"]
    final = {i: pod.client.wait_job(f"wait-{i}", 240)["status"] for i in unfinished}
    assert set(final.values()) <= {"completed"}, final
