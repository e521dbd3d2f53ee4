"""Job deadlines and the app's cancel (issue 17 items 4 and 5).

In the runtime (a small stepping engine, as in test_runtime.py, so these are about the executor): a job
past its deadline is stopped at a step and fails `timeout`, the job behind it completes; an engine that
ignores the stop has its process replaced (recorded here instead of exiting); the app's `jobs` table,
served by the Supabase stand-in over PostgREST, cancels a job before it starts and while it runs; a
failing read never fails a job; APP_CANCEL_CHECK=0 never reads.

On the queue path (real redis-server, real gunicorn workers, signed callbacks to the stand-in's
job-callback): the same, including a real SDXL step that never returns (tests/stuck_engine_app.py),
after which gunicorn's master starts a fresh worker process and the queue goes on. Through the
orchestrator (`POST /jobs`), a routed job past its worker's deadline ends `timeout` as well.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from common.callbacks import CallbackSender
from common.jobs import JobJournal
from common.metrics import process_metrics
from configuration.settings import Settings, SettingsError
from tests.app_client import queue_job_payload, rpush
from tests.standin_engine import StandInEngine
from tests.stuck_engine_app import COMMAND_TARGET, SLOW_PREFIX, STUCK_PREFIX
from tests.supabase_standin import CALLBACK_SECRET, SERVICE_KEY, SupabaseStandIn
from tests.support import WorkerProcess, base_env, poll_until
from workers.engines.base import GeneratedAsset
from workers.runtime.job_watch import deadline_of
from workers.runtime.jobs import STUCK_EXIT_STATUS, JobRunner
from workers.runtime.local_memory import LocalMemory
from workers.runtime.models import ModelHost
from workers.runtime.storage import LocalStorage

TERMINAL = ("completed", "failed", "cancelled")


class SteppingEngine(StandInEngine):
    """Steps of `step_s` seconds; a job whose params say `ignore_stop` blocks in its second step until
    `release` is set, ignoring any stop (a stuck kernel). Its model is always resident."""

    def __init__(self, settings: Settings, step_s: float = 0.02):
        super().__init__(settings, always_loaded=True)
        self.step_s = step_s
        self.release = threading.Event()
        self.in_step = threading.Event()

    def run(self, params, ctx):
        for step in range(params["steps"]):
            self.in_step.set()
            if params.get("ignore_stop") and step == 1:
                self.release.wait(60)
            time.sleep(self.step_s)
            ctx.on_step(step + 1, params["steps"])
        return [GeneratedAsset("image", [Image.new("RGB", (32, 32), (9, 9, 9))], {"seed": 1})]


def make_runner(tmp_path, callback_url: str, **changes):
    settings = Settings(content_tier_default="nsfw", callback_url=callback_url, callback_secret=CALLBACK_SECRET,
                        callback_backoff_s=0.05, output_dir=tmp_path / "out", **changes)
    engine = SteppingEngine(settings)
    exits: list[int] = []
    runner = JobRunner("test", engine, ModelHost(engine, LocalMemory(settings, "cpu")), LocalStorage(tmp_path / "out"),
                       CallbackSender(settings), JobJournal(tmp_path / "journal"), exit_process=exits.append)
    return runner, engine, exits


def wait_status(runner, job_id, timeout_s=30.0):
    record = poll_until(lambda: (r := runner.get(job_id)) is not None and r.status in TERMINAL and r, timeout_s, 0.02)
    assert record, runner.get(job_id).public()
    return record


def counter(metric, *labels) -> float:
    return process_metrics().child(metric, *labels)._value.get()


@pytest.fixture
def standin():
    with SupabaseStandIn() as server:
        yield server


def callback_url(standin) -> str:
    return standin.url + "/functions/v1/job-callback"


# -- settings --------------------------------------------------------------------------------------------
def test_deadline_defaults_by_profile_and_settings_checked():
    assert Settings(model_profile="production").job_deadline_s("image") == 180
    assert Settings(model_profile="production").job_deadline_s("video") == 500
    assert Settings(model_profile="synthetic").job_deadline_s("video") == 500
    assert Settings().job_deadline_s("image") == 120
    assert Settings().job_deadline_s("video") == 240
    assert Settings(job_deadline_video_s=7).job_deadline_s("video") == 7
    with pytest.raises(SettingsError, match="JOB_DEADLINE_GRACE_S"):
        Settings.from_env({"JOB_DEADLINE_GRACE_S": "0"})
    with pytest.raises(SettingsError, match="APP_CANCEL_CHECK_INTERVAL_S"):
        Settings.from_env({"APP_CANCEL_CHECK_INTERVAL_S": "0.2"})
    assert not Settings(app_cancel_check=True).reads_app_job_status  # no SUPABASE_URL: nothing to read
    assert Settings(supabase_url="http://x", supabase_service_key="k").reads_app_job_status
    assert not Settings(supabase_url="http://x", supabase_service_key="k", app_cancel_check=False).reads_app_job_status


def test_video_job_types_get_the_video_deadline_and_the_others_the_image_one():
    settings = Settings(job_deadline_image_s=11, job_deadline_video_s=22)
    assert deadline_of(settings, "sdxl_image_fast") == deadline_of(settings, "sdxl_image_high") == 11
    assert deadline_of(settings, "image_fast") == deadline_of(settings, "image7b_high_enhanced") == 11  # WAN frames
    assert deadline_of(settings, "video_fast") == deadline_of(settings, "video7b_high_enhanced") == 22
    assert deadline_of(Settings(model_profile="production"), "video_high") == 500


# -- the runtime -----------------------------------------------------------------------------------------
def test_past_its_deadline_a_job_stops_at_a_step_fails_timeout_and_the_next_completes(tmp_path, standin):
    runner, _engine, exits = make_runner(tmp_path, callback_url(standin), job_deadline_image_s=1.0)
    before = counter(process_metrics().job_timeouts, "test")
    started = time.monotonic()
    long, _ = runner.submit("long", "sdxl_image_fast", "u1", {"steps": 100000}, {})
    short, _ = runner.submit("short", "sdxl_image_fast", "u1", {"steps": 3}, {})
    ended = wait_status(runner, "long")
    assert ended.status == "failed", ended.public()
    assert ended.error["code"] == "timeout", ended.public()
    assert "deadline of 1s" in ended.error["message"]
    assert 1.0 <= time.monotonic() - started < 20
    assert 0 < ended.progress["step"] < 100000
    assert not ended.assets
    assert wait_status(runner, "short").status == "completed"
    assert standin.wait_for(lambda: standin.terminal_callbacks("short"), 10)
    assert exits == []
    assert counter(process_metrics().job_timeouts, "test") == before + 1
    [callback] = standin.wait_for(lambda: standin.terminal_callbacks("long"), 10)
    assert callback["body"]["status"] == "failed"
    assert callback["body"]["metadata"]["error_type"] == "timeout"
    assert not (tmp_path / "out" / "u1" / "long").exists()  # nothing stored


def test_an_engine_that_ignores_the_stop_has_its_process_replaced_and_the_job_fails_timeout(tmp_path, standin):
    runner, engine, exits = make_runner(tmp_path, callback_url(standin), job_deadline_image_s=0.5,
                                        job_deadline_grace_s=1.0)
    runner.submit("stuck", "sdxl_image_fast", "u1", {"steps": 5, "ignore_stop": True}, {})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not exits:
        time.sleep(0.02)
    assert exits == [STUCK_EXIT_STATUS]
    record = runner.get("stuck")
    assert record.status == "failed"
    assert record.error["code"] == "timeout"
    assert "did not stop within 1s" in record.error["message"]
    assert "replaced" in record.error["message"]
    [callback] = standin.wait_for(lambda: standin.terminal_callbacks("stuck"), 10)
    assert callback["body"]["metadata"]["error_type"] == "timeout"
    [journaled] = JobJournal(tmp_path / "journal").load_all()
    assert journaled.status == "failed"
    assert (journaled.error or {}).get("code") == "timeout"
    # The engine comes back after all (here it can): the job stays as it ended, with one callback.
    engine.release.set()
    runner.submit("after", "sdxl_image_fast", "u1", {"steps": 2}, {})
    assert wait_status(runner, "after").status == "completed"
    assert runner.get("stuck").status == "failed"
    assert standin.wait_for(lambda: standin.terminal_callbacks("after"), 10)
    assert len(standin.callbacks("stuck")) == 1


def test_the_apps_cancel_stops_a_running_job_and_one_not_started_never_runs(tmp_path, standin):
    runner, engine, _exits = make_runner(tmp_path, callback_url(standin), supabase_url=standin.url,
                                         supabase_service_key=SERVICE_KEY, app_cancel_check_interval_s=1.0)
    before_running = counter(process_metrics().app_cancels, "test", "running")
    standin.set_job_status("queued-then-cancelled", "cancelled")
    assert runner.cancelled_in_app("queued-then-cancelled")
    assert not runner.cancelled_in_app("never-cancelled")
    runner.submit("running", "sdxl_image_fast", "u1", {"steps": 100000}, {}, app_job=True)
    runner.submit("behind", "sdxl_image_fast", "u1", {"steps": 3}, {}, app_job=True)
    assert engine.in_step.wait(10)
    time.sleep(1.5)
    assert runner.get("running").status == "processing"
    standin.set_job_status("running", "cancelled")
    ended = wait_status(runner, "running")
    assert ended.status == "cancelled"
    assert ended.error == {"code": "cancelled", "message": "cancelled in the app"}
    assert not ended.assets
    assert not (tmp_path / "out" / "u1" / "running").exists()
    assert wait_status(runner, "behind").status == "completed"
    assert counter(process_metrics().app_cancels, "test", "running") == before_running + 1
    reads = standin.reads_of("running")
    assert 2 <= reads <= 30, reads  # every APP_CANCEL_CHECK_INTERVAL_S while it ran, not at every step
    assert standin.wait_for(lambda: standin.callbacks("running") and standin.terminal_callbacks("behind"), 10)


def test_a_failing_jobs_read_never_fails_the_job_and_is_counted_and_logged_once(tmp_path, standin, caplog):
    runner, _engine, _exits = make_runner(tmp_path, callback_url(standin), supabase_url=standin.url,
                                          supabase_service_key=SERVICE_KEY, app_cancel_check_interval_s=1.0)
    standin.fail_rest = 1000
    before = counter(process_metrics().app_status_read_failures, "test")
    caplog.set_level(logging.WARNING, logger="workers.runtime.job_watch")
    assert not runner.cancelled_in_app("flaky")
    runner.engine.step_s = 0.1
    runner.submit("flaky", "sdxl_image_fast", "u1", {"steps": 35}, {}, app_job=True)
    assert wait_status(runner, "flaky").status == "completed"
    assert standin.reads_of("flaky") >= 3
    assert counter(process_metrics().app_status_read_failures, "test") >= before + 3
    logged = [r for r in caplog.records if "flaky" in r.getMessage() and "could not be read" in r.getMessage()]
    assert len(logged) == 1
    assert standin.wait_for(lambda: standin.terminal_callbacks("flaky"), 10)


def test_app_cancel_check_off_never_reads_the_jobs_table(tmp_path, standin):
    runner, _engine, _exits = make_runner(tmp_path, callback_url(standin), supabase_url=standin.url,
                                          supabase_service_key=SERVICE_KEY, app_cancel_check=False,
                                          app_cancel_check_interval_s=1.0)
    standin.set_job_status("ignored", "cancelled")
    assert not runner.cancelled_in_app("ignored")
    runner.engine.step_s = 0.1
    runner.submit("ignored", "sdxl_image_fast", "u1", {"steps": 25}, {}, app_job=True)
    assert wait_status(runner, "ignored").status == "completed"
    assert standin.rest_reads == []
    assert standin.wait_for(lambda: standin.terminal_callbacks("ignored"), 10)


# -- the queue path: real redis-server, real gunicorn workers ----------------------------------------------
QUEUE = "deadline_test_sdxl_queue"


def small_job(steps: int = 2, job_id: str | None = None) -> dict:
    payload = queue_job_payload(job_id=job_id)
    del payload["config"]["resolution"]  # the placeholder's native size
    payload["config"]["num_inference_steps"] = steps
    return payload


def slow_job(steps: int = 100) -> dict:
    """At least SLOW_STEP_S per step on any machine (tests/stuck_engine_app.py)."""
    return small_job(steps, job_id=f"{SLOW_PREFIX}{uuid.uuid4()}")


def worker_env(tmp_path, placeholder_dir, redis_url: str, standin, queue: str, **extra) -> dict:
    return base_env(tmp_path, placeholder_dir, REDIS_URL=redis_url, SDXL_QUEUE=queue, SUPABASE_URL=standin.url,
                    SUPABASE_SERVICE_KEY=SERVICE_KEY, JOB_CALLBACK_SECRET=CALLBACK_SECRET, QUEUE_BLOCK_S="0.2",
                    QUEUE_HEARTBEAT_TTL_S="3", QUEUE_REAP_INTERVAL_S="1", APP_CANCEL_CHECK_INTERVAL_S="1",
                    **extra)


def start_test_build(env: dict) -> WorkerProcess:
    """The worker under gunicorn as the orchestrator starts it, serving tests/stuck_engine_app.py's build;
    its models loaded first (POST /memory/load), so a job's deadline measures its generation."""
    process = WorkerProcess("sdxl", env)
    process.command = [*process.command[:-1], COMMAND_TARGET]
    process.start()
    assert process.client.post("/memory/load", json={"which": "all"}, timeout=300).status_code == 200
    return process


def terminal(standin, job_id: str) -> list[dict]:
    return [c["body"] for c in standin.terminal_callbacks(job_id)]


def wait_terminal(standin, ids, timeout_s=240.0) -> None:
    poll_until(lambda: all(terminal(standin, i) for i in ids), timeout_s)
    missing = [i for i in ids if not terminal(standin, i)]
    assert not missing, f"no terminal callback for {missing}"


def wait_step(worker, job_id: str, step: int = 1, timeout_s: float = 120.0) -> dict:
    def reached():
        answer = worker.client.get(f"/jobs/{job_id}")
        record = answer.json() if answer.status_code == 200 else {}
        return record and (record["status"] in TERMINAL or record["progress"].get("step", 0) >= step) and record
    record = poll_until(reached, timeout_s)
    assert record, f"job {job_id} did not reach step {step}: {worker.client.get(f'/jobs/{job_id}').text}"
    return record


def processing_entries(client, queue: str) -> int:
    return sum(client.llen(k) for k in client.keys(f"{queue}:processing:*"))


@pytest.fixture(scope="module")
def queue_standin():
    with SupabaseStandIn() as server:
        yield server


@pytest.fixture(scope="module")
def worker(tmp_path_factory, placeholder_dir, redis_server, queue_standin):
    # A 10 s deadline: a 2-step job completes well within it on a loaded machine; a slow job (>= 30 s) never.
    env = worker_env(tmp_path_factory.mktemp("deadline-worker"), placeholder_dir, redis_server.url, queue_standin,
                     QUEUE, JOB_DEADLINE_IMAGE_S="10")
    process = start_test_build(env)
    yield process
    process.stop()


def test_queue_a_job_past_its_deadline_fails_timeout_signed_and_the_job_behind_completes(worker, redis_server,
                                                                                         queue_standin):
    client = redis_server.client()
    long, behind = slow_job(), small_job()
    rpush(client, long, QUEUE)
    rpush(client, behind, QUEUE)
    wait_terminal(queue_standin, [long["id"], behind["id"]], timeout_s=120)
    [ended] = terminal(queue_standin, long["id"])  # the stand-in accepts only correctly signed callbacks
    assert ended["status"] == "failed", ended
    assert ended["metadata"]["error_type"] == "timeout", ended
    assert "deadline of 10s" in ended["error_message"]
    assert ended["assets"] == []
    [done] = terminal(queue_standin, behind["id"])
    assert done["status"] == "completed"
    assert len(done["assets"]) == 1
    record = worker.client.get(f"/jobs/{long['id']}").json()
    assert record["status"] == "failed"
    assert record["error"]["code"] == "timeout"
    assert 0 < record["progress"]["step"] < 100
    assert not list(Path(worker.env["OUTPUT_DIR"]).glob(f"*/{long['id']}/*"))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (client.llen(QUEUE) or processing_entries(client, QUEUE)):
        time.sleep(0.1)
    assert client.llen(QUEUE) == 0
    assert processing_entries(client, QUEUE) == 0


def test_queue_the_apps_cancel_before_start_and_mid_run_and_the_jobs_around_complete(worker, redis_server,
                                                                                      queue_standin):
    client = redis_server.client()
    first, cancelled_early, running, last = small_job(), small_job(), slow_job(), small_job()
    queue_standin.set_job_status(cancelled_early["id"], "cancelled")
    for job in (first, cancelled_early, running):
        rpush(client, job, QUEUE)
    wait_step(worker, running["id"], 2)
    rpush(client, last, QUEUE)
    queue_standin.set_job_status(running["id"], "cancelled")
    wait_terminal(queue_standin, [first["id"], last["id"]])
    for job in (first, last):
        [done] = terminal(queue_standin, job["id"])
        assert done["status"] == "completed"
    early = worker.client.get(f"/jobs/{cancelled_early['id']}").json()
    assert early["status"] == "cancelled", early
    assert early["started_at"] is None, early
    assert early["error"]["message"] == "cancelled in the app before it started"
    stopped = worker.client.wait_job(running["id"], timeout_s=60)
    # Not `timeout`: the app's cancel (read every second) came long before the 10 s deadline.
    assert stopped["status"] == "cancelled", stopped
    assert stopped["error"]["message"] == "cancelled in the app", stopped
    assert stopped["assets"] == []
    assert stopped["progress"]["step"] < 100
    for job in (cancelled_early, running):
        assert not list(Path(worker.env["OUTPUT_DIR"]).glob(f"*/{job['id']}/*")), f"{job['id']} stored something"


def test_queue_a_failing_jobs_read_does_not_fail_the_job(worker, redis_server, queue_standin):
    queue_standin.fail_rest = 10000
    try:
        job = small_job(steps=8, job_id=f"{SLOW_PREFIX}{uuid.uuid4()}")  # >= 2.4 s: read at start and while running
        rpush(redis_server.client(), job, QUEUE)
        wait_terminal(queue_standin, [job["id"]])
        [done] = terminal(queue_standin, job["id"])
        assert done["status"] == "completed"
        assert queue_standin.reads_of(job["id"]) >= 2
        metrics = worker.client.get("/metrics").text
        [line] = [m for m in metrics.splitlines() if m.startswith("ourvidz_app_status_read_failures_total{")]
        assert float(line.split()[-1]) >= 2
    finally:
        queue_standin.fail_rest = 0


def test_queue_an_engine_that_ignores_the_stop_gets_its_process_replaced(tmp_path, placeholder_dir, redis_server,
                                                                         queue_standin):
    queue = "stuck_engine_queue"
    # 30 s: the job behind runs on the fresh process, which loads the model within its deadline.
    env = worker_env(tmp_path, placeholder_dir, redis_server.url, queue_standin, queue, JOB_DEADLINE_IMAGE_S="30",
                     JOB_DEADLINE_GRACE_S="3")
    process = start_test_build(env)
    try:
        client = redis_server.client()
        stuck, behind = small_job(steps=10, job_id=f"{STUCK_PREFIX}{uuid.uuid4()}"), small_job()
        first_pid = process.client.get("/health").json()["pid"]
        rpush(client, stuck, queue)
        rpush(client, behind, queue)
        wait_step(process, stuck["id"], 1)
        wait_terminal(queue_standin, [stuck["id"], behind["id"]], timeout_s=240)
        [ended] = terminal(queue_standin, stuck["id"])
        assert ended["status"] == "failed", ended
        assert ended["metadata"]["error_type"] == "timeout", ended
        assert "the worker process was replaced" in ended["error_message"]
        [done] = terminal(queue_standin, behind["id"])
        assert done["status"] == "completed"
        assert process.client.get("/health").json()["pid"] != first_pid
        assert process.proc is not None
        assert process.proc.poll() is None
        record = process.client.get(f"/jobs/{stuck['id']}").json()  # the new process has it from its journal
        assert record["status"] == "failed"
        assert record["error"]["code"] == "timeout"
        master_log = process.log_path.read_text(errors="replace")
        assert f"exited with code {STUCK_EXIT_STATUS}" in master_log, process.log()
        # the new process acknowledged the entry left in its processing list
        poll_until(lambda: not (client.llen(queue) or processing_entries(client, queue)), 15)
        assert client.llen(queue) == 0
        assert processing_entries(client, queue) == 0
    finally:
        process.stop()


def test_routed_job_past_its_deadline_ends_timeout_with_one_signed_callback(start_pod, queue_standin):
    """POST /jobs on the orchestrator: the orchestrator mirrors its worker's record, so a routed job past the
    worker's deadline ends `timeout` too, in the one callback the orchestrator sends. 2 s is far below what
    the model load plus 100 steps of six 256x256 images take on any CPU."""
    pod = start_pod("routed-deadline", workers=("sdxl",), ready=False, JOB_DEADLINE_IMAGE_S="2",
                    CALLBACK_URL=callback_url(queue_standin), JOB_CALLBACK_SECRET=CALLBACK_SECRET)
    try:
        pod.wait_ready()
        job_id = f"routed-{uuid.uuid4()}"
        answer = pod.client.post("/jobs", json={"id": job_id, "type": "sdxl_image_fast", "prompt": "a red fox",
                                                "user_id": "u1", "config": {"steps": 100, "num_images": 6,
                                                                            "width": 256, "height": 256}})
        assert answer.status_code == 202, answer.text
        record = pod.client.wait_job(job_id, timeout_s=120)
        assert record["status"] == "failed", record
        assert record["error"]["code"] == "timeout", record
        assert "deadline of 2s" in record["error"]["message"]
        wait_terminal(queue_standin, [job_id], timeout_s=30)
        [callback] = terminal(queue_standin, job_id)
        assert callback["status"] == "failed", callback
        assert callback["metadata"]["error_type"] == "timeout", callback
    finally:
        assert pod.stop() == 0


def test_routed_job_on_a_stuck_engine_ends_timeout_after_its_worker_process_is_replaced(start_pod, queue_standin):
    """Under the orchestrator: the SDXL worker (the test build's step hook through a sitecustomize.py, since
    the supervisor starts the real command line) never returns from a step; the worker process exits, its
    gunicorn master starts a fresh one, the supervisor sees no death, and the routed job mirrors `timeout`
    from the new process's journal, in one signed callback. The next routed job completes."""
    pod = start_pod("stuck-routed", workers=("sdxl",), test_build=True, ready=False, JOB_DEADLINE_IMAGE_S="30",
                    JOB_DEADLINE_GRACE_S="3", CALLBACK_URL=callback_url(queue_standin),
                    JOB_CALLBACK_SECRET=CALLBACK_SECRET)
    try:
        pod.wait_ready()
        loaded = pod.client.post("/memory/load", json={"worker": "sdxl", "which": "all"}, timeout=300)
        assert loaded.status_code == 200, loaded.text  # the deadline then measures generation only
        first_pid = pod.workers()["sdxl"]["pid"]
        stuck_id, next_id = f"{STUCK_PREFIX}{uuid.uuid4()}", f"after-{uuid.uuid4()}"
        body = {"type": "sdxl_image_fast", "prompt": "a red fox", "user_id": "u1", "config": {"steps": 10}}
        assert pod.client.post("/jobs", json={**body, "id": stuck_id}).status_code == 202
        record = pod.client.wait_job(stuck_id, timeout_s=180)
        assert record["status"] == "failed", record
        assert record["error"]["code"] == "timeout", record
        assert "the worker process was replaced" in record["error"]["message"]
        wait_terminal(queue_standin, [stuck_id], timeout_s=30)
        [callback] = terminal(queue_standin, stuck_id)
        assert callback["metadata"]["error_type"] == "timeout", callback
        sdxl_worker = pod.workers()["sdxl"]
        assert sdxl_worker["pid"] == first_pid, sdxl_worker  # gunicorn's master
        assert sdxl_worker["restarts"] == 0, sdxl_worker
        # The stuck process answers until it exits, a moment after the callback: a job sent to it then is
        # refused 503 with Retry-After (the worker could not be reached), as during any process replacement.
        # A client retries; so does this test, until the fresh process takes the job.
        answers = []
        poll_until(lambda: answers.append(pod.client.post("/jobs", json={**body, "id": next_id,
                                                                         "config": {"steps": 2}}))
                   or answers[-1].status_code != 503, 60, 0.5)
        assert answers[-1].status_code == 202, [(a.status_code, a.text) for a in answers]
        assert pod.client.wait_job(next_id, timeout_s=180)["status"] == "completed"
    finally:
        assert pod.stop() == 0
