"""Registration with the app that never gives up (issue 17 item 6), against tests/supabase_standin.py with
the real supabase client: the app's functions answering 503 for 30 s, public URLs on hosts other than
RunPod, registration again at every worker start and every REGISTRATION_REFRESH_S, and the app's chat
health entry kept fresh by invoking `health-check-workers`."""
from __future__ import annotations

import json
import time

import pytest

from configuration.settings import Settings, SettingsError
from orchestrator.registration import Registrar
from tests.supabase_standin import SERVICE_KEY, SupabaseStandIn
from tests.support import StaticServer, poll_until

pytestmark = pytest.mark.timeout(180)

OUTAGE_S = 30.0


@pytest.fixture
def public_worker():
    """Where the workers' public URLs point: something answering GET /health, as the app's functions check."""
    server = StaticServer({"/health": (200, "application/json", json.dumps({"status": "ok"}).encode())})
    yield server
    server.close()


def _settings(standin: SupabaseStandIn, worker_url: str, **changes) -> Settings:
    values = dict(supabase_url=standin.url, supabase_service_key=SERVICE_KEY, wan_public_url=worker_url,
                  chat_public_url=worker_url, registration_backoff_s=0.25, registration_backoff_max_s=2.0,
                  registration_refresh_s=0, health_check_workers_s=0)
    values.update(changes)
    settings = Settings(**values)
    settings.check()
    return settings


def test_registration_outlasts_30s_of_503s_then_keeps_the_chat_health_entry_fresh(public_worker):
    with SupabaseStandIn() as standin:
        started = time.monotonic()
        for function in ("update-worker-url", "register-chat-worker", "health-check-workers"):
            standin.unavailable_until[function] = started + OUTAGE_S
        registrar = Registrar(_settings(standin, public_worker.url, health_check_workers_s=1.0))
        try:
            registrar.worker_ready("wan")
            registrar.worker_ready("chat")
            assert poll_until(lambda: registrar.status("wan")["status"] == "retrying", 10), registrar.status("wan")
            assert not standin.chat_worker_usable()
            assert poll_until(lambda: all((registrar.status(w) or {}).get("status") == "registered"
                                     for w in ("wan", "chat")), OUTAGE_S + 30), (registrar.status("wan"),
                                                                                 registrar.status("chat"))
            took = time.monotonic() - started
            wan_calls = standin.function_calls("update-worker-url")
            print(f"registered after {took:.1f}s; update-worker-url calls: {len(wan_calls)} "
                  f"({sum(c['status'] == 503 for c in wan_calls)} answered 503)")
            assert took >= OUTAGE_S
            # many more attempts than the four the previous registrar made, and never more than the cap apart
            assert sum(c["status"] == 503 for c in wan_calls) >= 10
            assert wan_calls[-1]["status"] == 200
            assert registrar.status("wan")["failed_attempts"] >= 10
            assert standin.system_config["workerUrl"] == public_worker.url
            assert standin.system_config["chatWorkerUrl"] == public_worker.url
            # the app's roleplay gate: healthy, with a workerUrl, checked under 120 s ago; only health-check-workers
            # fills workerUrl, and the orchestrator now invokes it itself (after its own outage ended)
            assert poll_until(standin.chat_worker_usable, 15), standin.system_config
            checks = standin.function_calls("health-check-workers")
            assert checks
            assert all(c["headers"]["Authorization"] == f"Bearer {SERVICE_KEY}" for c in checks)
            assert poll_until(lambda: (registrar.status("chat")["health_check"] or {}).get("calls", 0) >= 2, 10)
            assert registrar.status("chat")["health_check"]["status"] == "ok"
            # a worker start registers again (the restarted worker may have a new URL); the older loop ends
            before = len(standin.function_calls("update-worker-url"))
            registrar.worker_ready("wan")
            assert poll_until(lambda: len(standin.function_calls("update-worker-url")) == before + 1, 10)
            # counted by the new start's loop once the stand-in's answer is read (it records the call before)
            assert poll_until(lambda: registrar.status("wan")["registrations"] == 1, 10), registrar.status("wan")
        finally:
            registrar.stop()


def test_registered_workers_register_again_every_refresh_period(public_worker):
    with SupabaseStandIn() as standin:
        registrar = Registrar(_settings(standin, public_worker.url, registration_refresh_s=0.5))
        try:
            registrar.worker_ready("wan")
            assert poll_until(lambda: (registrar.status("wan") or {}).get("registrations", 0) >= 3, 20), \
                registrar.status("wan")
            # the row was lost on the app's side: the next refresh writes it again
            standin.system_config.pop("workerUrl")
            assert poll_until(lambda: standin.system_config.get("workerUrl") == public_worker.url, 10)
        finally:
            registrar.stop()
        calls = len(standin.function_calls("update-worker-url"))
        time.sleep(1.5)
        assert len(standin.function_calls("update-worker-url")) <= calls + 1  # stop() ends the loop


def test_without_health_checks_the_app_never_gets_the_chat_workers_url(public_worker):
    """HEALTH_CHECK_WORKERS_S=0: register-chat-worker alone leaves the entry without workerUrl, which the
    app's roleplay reads as no chat worker (the gap the periodic health check closes)."""
    with SupabaseStandIn() as standin:
        registrar = Registrar(_settings(standin, public_worker.url))
        try:
            registrar.worker_ready("chat")
            assert poll_until(lambda: (registrar.status("chat") or {}).get("status") == "registered", 10)
            assert "workerUrl" not in standin.system_config["workerHealthCache"]["chatWorker"]
            assert not standin.chat_worker_usable()
            assert not standin.function_calls("health-check-workers")
            assert "health_check" not in registrar.status("chat")
        finally:
            registrar.stop()


def test_public_urls_for_hosts_other_than_runpod():
    def settings(**env) -> Settings:
        return Settings.from_env({"WAN_PORT": "7860", "CHAT_PORT": "7861", **env})

    assert settings().public_url("wan") is None
    assert settings(RUNPOD_POD_ID="abc").public_url("wan") == "https://abc-7860.proxy.runpod.net"
    templated = settings(PUBLIC_URL_TEMPLATE="https://{worker}.gpu.example.com:{port}/")
    assert templated.public_url("chat") == "https://chat.gpu.example.com:7861"
    explicit = settings(RUNPOD_POD_ID="abc", CHAT_PUBLIC_URL="https://chat.example.org/")
    assert explicit.public_url("chat") == "https://chat.example.org"
    assert explicit.public_url("wan").endswith(
        "-7860.proxy.runpod.net")
    with pytest.raises(SettingsError, match="PUBLIC_URL_TEMPLATE may use"):
        settings(PUBLIC_URL_TEMPLATE="https://{host}:{port}")
    with pytest.raises(SettingsError, match="RUNPOD_POD_ID is not set"):
        settings(PUBLIC_URL_TEMPLATE="https://{pod_id}-{port}.example.com")
    with pytest.raises(SettingsError, match="WAN_PUBLIC_URL must be an http"):
        settings(WAN_PUBLIC_URL="wan.example.com")
    with pytest.raises(SettingsError, match="REGISTRATION_BACKOFF_S"):
        settings(REGISTRATION_BACKOFF_S="5", REGISTRATION_BACKOFF_MAX_S="1")


def test_registration_body_says_where_the_url_came_from(public_worker):
    with SupabaseStandIn() as standin:
        registrar = Registrar(_settings(standin, public_worker.url))
        try:
            registrar.worker_ready("wan")
            assert poll_until(lambda: standin.function_calls("update-worker-url"), 10)
        finally:
            registrar.stop()
        body = standin.function_calls("update-worker-url")[0]["body"]
        assert body["worker_url"] == public_worker.url
        assert body["detection_method"] == "WAN_PUBLIC_URL"
        assert body["auto_registered"] is True
        assert body["registration_method"] == "orchestrator"


def test_the_pod_registers_its_chat_worker_through_the_supervisor(start_pod):
    """The wiring as deployed: `python -m orchestrator` with CHAT_PUBLIC_URL (a host other than RunPod); the
    app's functions are down until the pod has failed to register a few times; the chat worker then ends
    registered and usable by the app."""
    from tests.support import free_port

    functions = ("register-chat-worker", "health-check-workers")
    with SupabaseStandIn() as standin:
        chat_port = free_port()
        for function in functions:
            standin.unavailable_until[function] = time.monotonic() + 3600
        pod = start_pod("registering", workers=("chat",), ready=False, CHAT_PORT=chat_port, SUPABASE_URL=standin.url,
                        SUPABASE_SERVICE_KEY=SERVICE_KEY, CHAT_PUBLIC_URL=f"http://127.0.0.1:{chat_port}",
                        REGISTRATION_BACKOFF_S="0.5", REGISTRATION_BACKOFF_MAX_S="2", HEALTH_CHECK_WORKERS_S="1")
        env = pod.env
        try:
            pod.wait_ready()
            assert poll_until(lambda: (pod.workers()["chat"]["registration"] or {}).get("failed_attempts", 0) >= 3,
                              60), \
                pod.workers()["chat"]
            assert pod.workers()["chat"]["registration"]["status"] == "retrying"
            for function in functions:
                standin.unavailable_until[function] = 0.0
            assert poll_until(lambda: pod.workers()["chat"]["registration"]["status"] == "registered", 30), \
                pod.workers()["chat"]
            registration = pod.workers()["chat"]["registration"]
            assert registration["failed_attempts"] >= 3
            assert registration["detail"].endswith(f":{chat_port}")
            assert poll_until(standin.chat_worker_usable, 20), standin.system_config
            assert standin.system_config["workerHealthCache"]["chatWorker"]["workerUrl"] == env["CHAT_PUBLIC_URL"]
            body = standin.function_calls("register-chat-worker")[-1]["body"]
            assert body["capabilities"]["chat"] is True
            assert body["worker_url"] == env["CHAT_PUBLIC_URL"]
        finally:
            assert pod.stop() == 0, pod.log()
