"""Unit tests of common/metrics.py and common/logging.py: names, labels, stage timing, JSON log lines,
request ids. (The scrape of real processes after a job is tests/stack/test_metrics_stack.py.)"""
from __future__ import annotations

import io
import json
import logging
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.logging import (
    Progress,
    configure_logging,
    describe_text,
    in_current_context,
    install_request_id,
    log_context,
    set_stage,
)
from common.metrics import Metrics, StageTimer

# Label names a metric may use: all bounded by the configuration (never a prompt, user or job id).
ALLOWED_LABELS = {"worker", "type", "status", "stage", "code", "queue", "device", "model", "reason", "kind",
                  "outcome", "ourvidz_worker_state"}
UNIT_SUFFIXES = ("_seconds", "_bytes", "_per_second", "_total", "_info")
UNITLESS = {"ourvidz_jobs_queued", "ourvidz_jobs_running", "ourvidz_queue_depth", "ourvidz_queue_in_flight",
            "ourvidz_queue_redis_up",
            "ourvidz_callbacks_pending", "ourvidz_callbacks_refused_by_receiver", "ourvidz_chat_batch_size",
            "ourvidz_worker_state", "ourvidz_worker_ready"}


def scrape(metrics: Metrics) -> dict:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def test_every_metric_is_named_by_convention_and_labelled_by_bounded_names():
    metrics = Metrics("sdxl", "placeholder")
    families = [f for f in metrics.registry.collect() if f.name.startswith("ourvidz_")]
    assert len(families) >= 40
    for family in families:
        assert re.fullmatch(r"ourvidz_[a-z0-9_]+", family.name), family.name
        if family.type == "counter":
            assert not family.name.endswith("_total"), family.name  # the client appends _total to the samples
        elif family.name not in UNITLESS and family.type != "info":
            assert family.name.endswith(UNIT_SUFFIXES), f"{family.name} has no unit in its name"
    metrics.job_submitted("sdxl", "sdxl_image_fast")
    metrics.worker_state.labels("sdxl").state("ready")
    metrics.queue_depth.labels("sdxl_queue").set(3)
    metrics.memory_leased.labels("sdxl", "sdxl").set(1)
    for family in metrics.registry.collect():
        for sample in family.samples:
            extra = set(sample.labels) - ALLOWED_LABELS - {"le"} - (
                set(sample.labels) if family.name in ("ourvidz_build", "python_info") else set())
            assert not extra, f"{sample.name} has labels {extra}"


def test_a_finished_job_counts_in_counters_failures_and_both_histograms():
    metrics = Metrics("sdxl")
    metrics.job_submitted("sdxl", "sdxl_image_fast")
    metrics.job_started("sdxl", "sdxl_image_fast")
    metrics.job_finished("sdxl", "sdxl_image_fast", "failed", 3.2, "internal_error",
                         {"queue_wait": 0.02, "loading": 1.0, "generating": 2.1})
    families = scrape(metrics)
    finished = {s.labels["status"]: s.value for s in families["ourvidz_jobs_finished"].samples}
    assert finished == {"failed": 1.0}
    failures = families["ourvidz_job_failures"].samples
    assert [(s.labels["code"], s.value) for s in failures] == [("internal_error", 1.0)]
    counts = {s.labels["stage"]: s.value for s in families["ourvidz_job_stage_duration_seconds"].samples
              if s.name.endswith("_count")}
    assert counts == {"queue_wait": 1.0, "loading": 1.0, "generating": 1.0}
    total = [s for s in families["ourvidz_job_duration_seconds"].samples if s.name.endswith("_sum")]
    assert total[0].value == pytest.approx(3.2)
    le_5 = [s for s in families["ourvidz_job_duration_seconds"].samples
            if s.name.endswith("_bucket") and s.labels["le"] == "5.0"]
    assert le_5[0].value == 1.0


def test_build_info_and_process_start_time_are_exposed():
    families = scrape(Metrics("chat", "placeholder"))
    build = families["ourvidz_build_info"].samples[0].labels
    assert build["process"] == "chat"
    assert build["model_profile"] == "placeholder"
    assert re.match(r"\d+\.\d+", build["torch"])
    assert re.match(r"\d+\.\d+", build["diffusers"])
    assert families["process_start_time_seconds"].samples[0].value > 1e9


def test_a_failing_scrape_hook_is_logged_and_the_rest_is_served(caplog):
    metrics = Metrics("orchestrator")

    def broken(_m):
        raise RuntimeError("device gone")
    metrics.on_scrape(broken)
    metrics.on_scrape(lambda m: m.device_total.labels("0").set(42))
    families = scrape(metrics)
    assert families["ourvidz_device_memory_total_bytes"].samples[0].value == 42
    assert "device gone" in caplog.text


def test_stage_timer_accumulates_a_stage_entered_twice_and_includes_the_open_stage():
    now = [0.0]
    timer = StageTimer(clock=lambda: now[0])
    timer.add("queue_wait", 0.5)
    timer.enter("loading")
    now[0] = 1.0
    timer.enter("generating")
    now[0] = 3.0
    timer.enter("loading")
    now[0] = 3.25
    assert timer.timings() == {"queue_wait": 0.5, "loading": 1.25, "generating": 2.0}
    now[0] = 4.0
    assert timer.stop() == {"queue_wait": 0.5, "loading": 2.0, "generating": 2.0}


# ---- logs --------------------------------------------------------------------------------------------------

@pytest.fixture
def captured():
    """A stream for the log lines, and an empty log context: a test that ran a job's stages in this thread
    before (an engine driven directly) may have left `stage` set in it."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    with log_context(job_id=None, worker=None, stage=None, request_id=None):
        yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def test_json_lines_carry_the_context_fields_in_this_thread_and_in_threads_started_from_it(captured):
    import threading
    configure_logging("sdxl", "INFO", "json", stream=captured)
    log = logging.getLogger("ourvidz.test")
    log.info("outside")
    with log_context(job_id="job-1", request_id="req-1"):
        set_stage("generating")
        log.info("inside %d", 7, extra={"steps": 4})
        thread = threading.Thread(target=in_current_context(lambda: log.warning("from a thread")))
        thread.start()
        thread.join()
    log.info("after")
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["outside", "inside 7", "from a thread", "after"]
    assert lines[0]["job_id"] is None
    assert lines[0]["worker"] == "sdxl"
    assert lines[0]["process"] == "sdxl"
    assert {k: lines[1][k] for k in ("job_id", "request_id", "stage", "level", "steps")} == {
        "job_id": "job-1", "request_id": "req-1", "stage": "generating", "level": "INFO", "steps": 4}
    assert lines[2]["job_id"] == "job-1"
    assert lines[2]["level"] == "WARNING"
    assert lines[3]["stage"] is None
    assert lines[3]["job_id"] is None


def test_text_format_is_readable_and_names_the_context(captured):
    configure_logging("orchestrator", "INFO", "text", stream=captured)
    with log_context(job_id="job-2", worker="wan", request_id="req-2"):
        logging.getLogger("ourvidz.test").info("routed")
    line = captured.getvalue().strip()
    assert not line.startswith("{")
    assert re.search(r" orchestrator INFO ourvidz.test \[worker=wan job_id=job-2 request_id=req-2\]: routed$",
                     line), line


def test_describe_text_gives_length_and_hash_never_the_text():
    text = "a purple giraffe reading a newspaper"
    described = describe_text(text)
    assert "giraffe" not in described
    assert described.startswith(f"{len(text)} chars, sha256 ")


def test_progress_logs_first_last_and_at_most_one_line_per_interval(caplog):
    now = [0.0]
    caplog.set_level(logging.INFO)
    progress = Progress(logging.getLogger("ourvidz.progress"), "building", 10, "models", every_s=5,
                        clock=lambda: now[0])
    for i in range(10):
        now[0] = i * 1.0
        progress.advance()
    progress.finish()
    messages = [r.getMessage() for r in caplog.records if r.name == "ourvidz.progress"]
    assert messages == ["building: 1/10 models (10%)", "building: 6/10 models (60%)", "building: 10/10 models (100%)"]


def test_request_id_is_taken_from_a_plain_header_replaced_when_not_and_echoed(captured):
    from flask import Flask, jsonify

    from common.logging import current_request_id
    app = Flask("t")
    install_request_id(app)

    @app.get("/x")
    def x():
        return jsonify({"rid": current_request_id()})
    client = app.test_client()
    ok = client.get("/x", headers={"X-Request-ID": "abc-123"})
    assert ok.headers["X-Request-ID"] == "abc-123"
    assert ok.json["rid"] == "abc-123"
    bad = client.get("/x", headers={"X-Request-ID": "a prompt with spaces; " + "x" * 80})
    assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["X-Request-ID"])
    assert bad.json["rid"] == bad.headers["X-Request-ID"]
    fresh = client.get("/x")
    assert fresh.headers["X-Request-ID"] not in ("abc-123", bad.headers["X-Request-ID"])


def test_callbacks_count_attempts_retries_deliveries_and_show_the_backlog_age(tmp_path):
    from common.callbacks import CallbackSender
    from common.metrics import process_metrics
    from configuration.settings import Settings
    from tests.support import CallbackReceiver

    def value(family: str, **labels) -> float:
        for f in process_metrics().registry.collect():
            for sample in f.samples:
                if sample.name == family and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0
    series = (("ourvidz_callback_attempts_total", {"outcome": "retryable"}),
              ("ourvidz_callback_attempts_total", {"outcome": "delivered"}),
              ("ourvidz_callback_retries_total", {}), ("ourvidz_callbacks_delivered_total", {}))
    receiver = CallbackReceiver(fail_first=1)
    try:
        before = [value(name, **labels) for name, labels in series]
        sender = CallbackSender(Settings(callback_url=receiver.url, callback_backoff_s=0.3))
        assert sender.oldest_pending_age_s() == 0.0
        sender.send({"job_id": "cb-1", "status": "completed"})
        receiver.wait_for(1)
        assert sender.pending() == 1
        assert sender.oldest_pending_age_s() > 0
        assert sender.flush(10)
        after = [value(name, **labels) for name, labels in series]
        assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 1]
        assert sender.stats() == {"enabled": True, "pending": 0, "oldest_pending_age_s": 0.0, "delivered": 1,
                                  "abandoned": 0, "refused": 0, "warning": None}
    finally:
        receiver.close()


def test_docs_list_every_metric():
    from prometheus_client.metrics import MetricWrapperBase

    from tests.support import REPO
    doc = (REPO / "docs" / "CONFIGURATION.md").read_text()  # the generated metrics table (python -m common.reference)
    metrics = Metrics("sdxl")
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            name = obj._name + {"counter": "_total", "info": "_info"}.get(obj._type, "")
            assert f"`{name}`" in doc, f"{name} is not listed in docs/CONFIGURATION.md"


def test_junk_types_codes_and_stages_add_one_other_series_not_one_per_value():
    """Issue 19: a queued entry's `type` became a label (1,950 junk types took /metrics from 36 KB to
    1 MB). Every type, code and stage outside its closed set counts as "other"."""
    metrics = Metrics("sdxl")
    metrics.job_finished("sdxl", "sdxl_image_fast", "failed", 1.0, "validation_error", {"generating": 0.5})

    def series() -> int:
        """Label sets of the job metrics (a histogram's buckets, _count and _sum are one series)."""
        return len({(f.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "le")))
                    for f in metrics.registry.collect() if f.name.startswith("ourvidz_job") for s in f.samples})

    before = series()
    for i in range(200):
        junk = f"junk-{i}-\u202e\n{'x' * i}"
        metrics.job_submitted("sdxl", junk)
        metrics.job_started("sdxl", junk)
        metrics.job_cancelled("sdxl", junk)
        metrics.job_finished("sdxl", junk, "failed", 1.0, junk, {junk: 0.1, "generating": 0.2})
    families = scrape(metrics)
    assert {s.labels["type"] for s in families["ourvidz_jobs_submitted"].samples} == {"other"}
    assert {s.labels["code"] for s in families["ourvidz_job_failures"].samples} == {"validation_error", "other"}
    assert {s.labels["stage"] for s in families["ourvidz_job_cancellations"].samples} == {"other"}
    stages = {(s.labels["type"], s.labels["stage"]) for s in families["ourvidz_job_stage_duration_seconds"].samples}
    assert stages == {("sdxl_image_fast", "generating"), ("other", "other"), ("other", "generating")}
    # one "other" series in submitted, started, finished, failures, cancellations and duration; two in
    # the stage histogram (a junk stage, and a known stage of a junk type)
    added = series() - before
    assert added == 8, f"{added} series added by 200 junk values"
    assert metrics.closed.job_type("sdxl_image_fast") == "sdxl_image_fast"
    assert metrics.closed.code("content_policy") == "content_policy"
    assert metrics.closed.code("unknown") == "unknown"
