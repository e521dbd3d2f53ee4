"""The operator's view of the queues (orchestrator/queues.py, queue_cli) and the keys the app's callers hold."""
from __future__ import annotations

import json

from flask import Flask

from common.auth import install_auth
from common.queues import QueueKeys, consumer_id
from configuration.settings import Settings
from orchestrator.queue_cli import render_status
from orchestrator.queues import QueueStatus, redacted
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
    assert status["redis"] == {"url": redis_server.url, "connected": True, "error": None}
    sdxl, wan = status["queues"]
    assert (sdxl["worker"], sdxl["depth"], sdxl["dead_letters"], wan["depth"]) == ("sdxl", 2, 1, 0)
    by_id = {c["consumer_id"]: c for c in sdxl["consumers"]}
    assert by_id[ours]["alive"] and by_id[ours]["this_pod"] and by_id[ours]["in_flight"] == ["running-1"]
    other = by_id["other-pod-sdxl-1"]
    assert not other["alive"] and not other["this_pod"] and other["in_flight"] == ["held-by-a-dead-pod"]
    table = render_status(status)
    assert "ops_sdxl" in table and "held-by-a-dead-pod" in table and "NO" in table


def test_queue_status_without_redis_and_with_redis_unreachable(tmp_path):
    assert QueueStatus(Settings(), ["sdxl"]).status()["redis"] is None
    down = Settings(redis_url=f"redis://:pw@127.0.0.1:{free_port()}/0", output_dir=tmp_path)
    status = QueueStatus(down, ["sdxl"]).status()
    assert status["redis"]["connected"] is False and status["redis"]["error"]
    assert status["redis"]["url"] == redacted(down.redis_url) and "pw" not in status["redis"]["url"]
    assert "UNREACHABLE" in render_status(status)


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
    from tests.test_runtime import CountingEngine
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
    assert record.status == "failed" and runner.get("r1") is record
    [body] = receiver.wait_for(1, "r1")
    assert body["status"] == "failed" and body["error_message"] == "/quality: no"
    assert body["metadata"]["error_type"] == "validation_error" and body["assets"] == []
    assert [r.status for r in JobJournal(tmp_path / "journal").load_all()] == ["failed"]
    assert runner.reject("r1", "x", "y", {"code": "c", "message": "m"}, {}) is record  # known id: the same job
