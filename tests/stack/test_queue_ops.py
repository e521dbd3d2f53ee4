"""The operator's view of the queues (orchestrator/queues.py, queue_cli) and the keys the app's callers hold."""
from __future__ import annotations

import json

import pytest
from flask import Flask

from common.auth import install_auth
from common.queues import QueueKeys, connect, consumer_id
from common.redact import redacted_url
from configuration.settings import Settings
from orchestrator.memory_cli import terminal_safe
from orchestrator.queue_cli import render_status
from orchestrator.queues import QueueStatus
from tests.support import free_port


def test_queue_status_shows_depth_dead_letters_and_every_consumer(redis_server, tmp_path):
    settings = Settings(redis_url=redis_server.url, sdxl_queue="ops_sdxl", wan_queue="ops_wan", output_dir=tmp_path)
    client, keys = redis_server.client(), QueueKeys("ops_sdxl")
    client.rpush("ops_sdxl", json.dumps({"id": "waiting-1"}), json.dumps({"id": "waiting-2"}))
    client.rpush(keys.dead, json.dumps({"reason": "not valid JSON"}))
    ours = consumer_id("sdxl", settings)
    client.sadd(keys.consumers, ours, "other-pod-sdxl-1")
    client.set(keys.heartbeat(ours), json.dumps({"worker": "sdxl"}), ex=30)
    client.lpush(keys.processing(ours), json.dumps({"id": "running-1"}))
    client.lpush(keys.processing("other-pod-sdxl-1"), json.dumps({"id": "held-by-a-dead-pod"}))

    status = QueueStatus(settings, ["sdxl", "wan", "chat"]).status()
    assert status["redis"] == {"url": redis_server.url, "connected": True, "state": "connected", "error": None}
    sdxl, wan = status["queues"]
    assert (sdxl["worker"], sdxl["depth"], sdxl["dead_letters"], wan["depth"]) == ("sdxl", 2, 1, 0)
    by_id = {c["consumer_id"]: c for c in sdxl["consumers"]}
    assert by_id[ours]["alive"]
    assert by_id[ours]["this_pod"]
    assert by_id[ours]["in_flight"] == ["running-1"]
    other = by_id["other-pod-sdxl-1"]
    assert not other["alive"]
    assert not other["this_pod"]
    assert other["in_flight"] == ["held-by-a-dead-pod"]
    table = render_status(status)
    assert "ops_sdxl" in table
    assert "held-by-a-dead-pod" in table
    assert "NO" in table


def test_queue_status_without_redis_and_with_redis_unreachable(tmp_path):
    assert QueueStatus(Settings(), ["sdxl"]).status()["redis"] is None
    down = Settings(redis_url=f"redis://:pw@127.0.0.1:{free_port()}/0", output_dir=tmp_path)
    status = QueueStatus(down, ["sdxl"]).status()
    assert status["redis"]["connected"] is False
    assert status["redis"]["error"]
    assert status["redis"]["url"] == redacted_url(down.redis_url)
    assert "pw" not in status["redis"]["url"]
    assert status["redis"]["state"] == "unreachable"
    assert "UNREACHABLE" in render_status(status)
    assert [q["queue"] for q in status["queues"]] == ["sdxl_queue"]
    assert status["queues"][0]["depth"] is None


CANARY = "Canary-S3cret"


def test_credentials_never_show_in_any_url_form_the_client_accepts():
    forms = [
        f"redis://:{CANARY}@redis.example:6379/0",
        f"redis://default:{CANARY}@redis.example:6379/0",
        f"rediss://{CANARY}@redis.example:6380",
        f"redis://redis.example:6379/0?password={CANARY}",
        f"redis://redis.example:6379/0?db=1&password={CANARY}&ssl_cert_reqs=required",
        f"redis://redis.example:6379/0?username=u&PASSWORD={CANARY}",
        f"redis://redis.example:6379/0?x={CANARY}",
        f"redis://:pa#ss{CANARY}@redis.example:6379/0",
        f"redis://:pa/ss?{CANARY}@redis.example:6379/0",
        f"redis://:p@ss{CANARY}@redis.example:6379/0",
        f"redis://redis.example:6379/0#{CANARY}",
        f"redis://redis.example:6379/0?password={CANARY}#{CANARY}",
        f"{CANARY}",
    ]
    for url in forms:
        shown = redacted_url(url)
        assert CANARY not in shown, (url, shown)
        assert CANARY.lower() not in shown.lower(), (url, shown)
    assert redacted_url("redis://default:pw@redis.example:6379/0?db=1&ssl_cert_reqs=required") == \
        "redis://***@redis.example:6379/0?db=1&ssl_cert_reqs=required"
    assert redacted_url("redis://redis.example:6379/0?password=pw") == "redis://redis.example:6379/0?password=***"
    assert redacted_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize("url", [f"redis://:pa#{CANARY}@127.0.0.1:6379/0", f"redis://u:12#{CANARY}@127.0.0.1/0"])
def test_a_url_the_client_would_misread_is_refused_without_quoting_it(url):
    with pytest.raises(ValueError, match="percent-encode") as refused:
        connect(url)
    assert CANARY not in str(refused.value)


def test_query_form_credentials_never_appear_in_the_queue_views(redis_server, tmp_path):
    """REDIS_URL with ?password= (accepted by redis-py) against a real password-protected Redis."""
    from tests.redis_support import RedisServer

    with RedisServer(password=CANARY) as server:
        url = f"redis://127.0.0.1:{server.port}/0?password={CANARY}"
        settings = Settings(redis_url=url, sdxl_queue="canary_q", output_dir=tmp_path)
        server.client().rpush("canary_q", json.dumps({"id": "j1"}))
        status = QueueStatus(settings, ["sdxl"]).status()
        assert status["redis"]["connected"], status
        assert status["queues"][0]["depth"] == 1, status
        shown = json.dumps(status) + render_status(status)
        assert CANARY not in shown
        assert "password=***" in shown
        wrong = Settings(redis_url=url.replace(CANARY, CANARY + "-wrong"), sdxl_queue="canary_q", output_dir=tmp_path)
        refused = QueueStatus(wrong, ["sdxl"]).status()
        assert refused["redis"]["state"] == "password_refused", refused
        shown = json.dumps(refused) + render_status(refused)
        assert CANARY not in shown
        assert "REFUSES THE PASSWORD" in shown


def test_operator_tables_print_untrusted_strings_escaped():
    from orchestrator.memory_cli import render_jobs

    hostile = "\x1b]0;owned\x07\x1b[2J\rtype\u202e"
    table = terminal_safe(render_jobs([{"job_id": "j1", "type": hostile, "status": "failed", "worker": "sdxl",
                                        "error_code": "\x9b31m"}]))
    assert not any(ord(c) < 32 and c != "\n" or 0x7f <= ord(c) <= 0x9f or c == "\u202e" for c in table), repr(table)
    assert "\\x1b]0;owned\\x07" in table
    assert "\\u202e" in table
    assert "\\x9b" in table


def test_every_configured_key_works_and_no_other():
    settings = Settings(api_key="roleplay-chat-key-0001", api_keys_extra="playground-key-00002,narrative-key-000003")
    keys = settings.api_keys
    assert len(keys) == 3
    app = Flask("t")
    install_auth(app, keys)
    app.add_url_rule("/chat", "chat", lambda: "ok", methods=["POST"])
    client = app.test_client()
    for key in keys:
        assert client.post("/chat", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.post("/chat", headers={"Authorization": f"bearer {keys[1]}"}).status_code == 200
    for bad in ("Bearer unknown-key-00000000", f"Bearer {keys[0]}x", "", f"Basic {keys[0]}"):
        assert client.post("/chat", headers={"Authorization": bad} if bad else {}).status_code == 401


def _runner(tmp_path, receiver, **settings_changes):
    from common.callbacks import CallbackSender
    from common.jobs import JobJournal
    from tests.unit.test_runtime import CountingEngine
    from workers.runtime.jobs import JobRunner
    from workers.runtime.local_memory import LocalMemory
    from workers.runtime.models import ModelHost
    from workers.runtime.storage import LocalStorage

    settings = Settings(callback_url=receiver.url, callback_backoff_s=0.05, output_dir=tmp_path / "out",
                        **settings_changes)
    engine = CountingEngine()
    return JobRunner("test", engine, ModelHost(engine, LocalMemory(settings, "cpu")), LocalStorage(tmp_path / "out"),
                     CallbackSender(settings), JobJournal(tmp_path / "journal"))


def test_processing_callback_is_a_setting_and_comes_before_the_terminal_one(tmp_path, receiver):
    runner = _runner(tmp_path, receiver, callback_processing=True)
    runner.submit("p1", "t", "u", {"steps": 2, "v": 1}, {"parameters": {"steps": 2, "guidance_scale": 5.0}})
    bodies = receiver.wait_for(2, "p1")
    assert [b["status"] for b in bodies] == ["processing", "completed"]
    assert bodies[1]["metadata"]["steps"] == bodies[1]["metadata"]["num_inference_steps"] == 2
    quiet = _runner(tmp_path / "quiet", receiver)
    quiet.submit("p2", "t", "u", {"steps": 1, "v": 2}, {})
    assert [b["status"] for b in receiver.wait_for(1, "p2")] == ["completed"]
    import time
    time.sleep(0.3)
    assert len(receiver.bodies("p2")) == 1


def test_a_rejected_job_is_journaled_failed_with_its_callback(tmp_path, receiver):
    from common.jobs import JobJournal

    runner = _runner(tmp_path, receiver)
    record = runner.reject("r1", "sdxl_image_fast", "u1", {"code": "validation_error", "message": "/quality: no"},
                           {"source": {"queue": "q"}})
    assert record.status == "failed"
    assert runner.get("r1") is record
    [body] = receiver.wait_for(1, "r1")
    assert body["status"] == "failed"
    assert body["error_message"] == "/quality: no"
    assert body["metadata"]["error_type"] == "validation_error"
    assert body["assets"] == []
    assert [r.status for r in JobJournal(tmp_path / "journal").load_all()] == ["failed"]
    assert runner.reject("r1", "x", "y", {"code": "c", "message": "m"}, {}) is record  # known id: the same job


def test_memory_cli_watch_prints_untrusted_strings_escaped():
    """`memory_cli status --watch` against a real HTTP server whose /ops/state carries escape codes."""
    import io

    import requests

    from orchestrator.memory_cli import watch
    from tests.support import StaticServer

    budget = {k: 0 for k in ("capacity_bytes", "reserve_bytes", "leased_bytes", "working_bytes", "external_bytes",
                             "available_bytes")}
    memory = {"devices": [], "budget": budget, "pressure": "low", "waiting": [], "counters": {}, "history": [],
              "workers": {"sdxl": {"state": "ready", "pid": 1, "models": {}}}}
    hostile = {"jobs": [{"job_id": "job-1", "type": "\x1b]0;owned\x07\x1b[2J", "status": "failed", "worker": "sdxl",
                         "stage": "\r\u202eevil", "error_code": "\x9b31m"}]}
    server = StaticServer({"/memory/status?history=15": (200, "application/json", json.dumps(memory).encode()),
                           "/ops/state": (200, "application/json", json.dumps(hostile).encode())})
    out = io.StringIO()
    try:
        assert watch(requests.Session(), server.url, 15, 0.01, 1, out=out) == 0
    finally:
        server.close()
    printed = out.getvalue()
    assert "job-1" in printed, printed
    assert "\\x1b]0;owned\\x07" in printed, printed
    assert "\\u202e" in printed, printed
    assert not any(ord(c) < 32 and c != "\n" or 0x7f <= ord(c) <= 0x9f or c == "\u202e" for c in printed)
