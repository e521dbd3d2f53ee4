"""The chat worker under gunicorn, as the pod runs it: every endpoint over real HTTP on the placeholder
Qwen models, the official `openai` client, streaming, memory, batching."""
import concurrent.futures
import json
import re
import time

import openai
import pytest
import requests

from tests.support import API_KEY, WorkerProcess, base_env

SYSTEM = "Rewrite the user's prompt as a detailed image description."
CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "seed": 5}


@pytest.fixture(scope="module")
def worker(tmp_path_factory, placeholder_dir):
    env = base_env(tmp_path_factory.mktemp("chat"), placeholder_dir, CHAT_BATCH_SIZE="4", CHAT_BATCH_WINDOW_MS="50",
                   WORKER_API_KEYS=",".join(APP_KEYS.values()))
    worker = WorkerProcess("chat", env).start()
    yield worker
    worker.stop()


def post(worker, path, body):
    return worker.client.post(path, json=body)


def ok(reply):
    assert reply.status_code == 200, reply.text
    return reply.json()


def enhance_body(**extra):
    return {"prompt": "a red fox", "system_prompt": SYSTEM, "max_tokens": 16, "temperature": 0.8, "seed": 3, **extra}


# ---- enhancement -------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "model"), [("/enhance/base", "base"), ("/enhance/instruct", "instruct")])
def test_enhance_happy_path(worker, path, model):
    body = ok(post(worker, path, enhance_body(target_model="sdxl")))
    assert body["success"] is True
    assert body["model"] == model
    assert body["original_prompt"] == "a red fox"
    assert body["enhanced_prompt"].strip()
    assert body["enhanced_prompt"] != "a red fox"
    assert 1 <= body["tokens_generated"] <= 16
    assert body["generation_time"] > 0
    assert body["parameters"]["seed"] == 3
    assert body["parameters"]["max_tokens"] == 16
    assert body["target_model"] == "sdxl"
    assert body["model_info"]["name"] == f"qwen_{model}"


def test_enhance_same_seed_same_text_and_legacy_route(worker):
    first = ok(post(worker, "/enhance/base", enhance_body()))
    again = ok(post(worker, "/enhance/base", enhance_body()))
    other = ok(post(worker, "/enhance/base", enhance_body(seed=4)))
    assert first["enhanced_prompt"] == again["enhanced_prompt"] != other["enhanced_prompt"]
    legacy = ok(post(worker, "/enhance", enhance_body(model="qwen_base")))
    assert legacy["enhanced_prompt"] == first["enhanced_prompt"]
    assert legacy["model"] == "base"
    assert ok(post(worker, "/enhance", enhance_body()))["model"] == "instruct"  # legacy default model


def test_raw_prompt_and_messages(worker):
    raw = ok(post(worker, "/enhance/base", {"prompt": "a red fox", "raw": True, "max_tokens": 6, "temperature": 0}))
    assert raw["raw"] is True
    assert raw["prompt_tokens"] < 10
    assert raw["parameters"]["stop"] == []
    msgs = ok(post(worker, "/enhance/instruct", {"messages": [{"role": "system", "content": SYSTEM},
                                                              {"role": "user", "content": "a red fox"}],
                                                 "max_tokens": 6, "seed": 1}))
    assert msgs["original_prompt"] == "a red fox"


def test_empty_enhancement_is_an_error_not_the_prompt(worker):
    body = {"prompt": "a red fox", "raw": True, "max_tokens": 8, "temperature": 0}
    greedy = ok(post(worker, "/enhance/base", body))["enhanced_prompt"]
    # A stop string at the first character of the (deterministic) output leaves nothing to return.
    reply = post(worker, "/enhance/base", {**body, "stop": greedy.lstrip()[0]})
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error["code"] == "empty_enhancement"
    assert "a red fox" not in json.dumps(reply.json())


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/enhance/base", {"system_prompt": SYSTEM}, "/prompt"),
    ("/enhance/base", {"prompt": "a", "max_tokens": 0}, "/max_tokens"),
    ("/enhance/base", {"prompt": "a", "max_tokens": 100000}, "/max_tokens"),
    ("/enhance/base", {"prompt": "a", "temperature": -1}, "/temperature"),
    ("/enhance/base", {"prompt": "a", "top_p": 0}, "/top_p"),
    ("/enhance/base", {"prompt": "a", "seed": -1}, "/seed"),
    ("/enhance/base", {"prompt": "a", "target_model": "flux"}, "/target_model"),
    ("/enhance/base", {"prompt": "a", "raw": True, "system_prompt": "s"}, "/system_prompt"),
    ("/enhance/instruct", {"prompt": "   "}, "/prompt"),
    ("/enhance/instruct", {"prompt": "a", "bogus": 1}, "/bogus"),
    ("/enhance", {"prompt": "a", "model": "qwen_huge"}, "/model"),
    ("/chat", {"messages": []}, "/messages"),
    ("/chat", {"messages": [{"role": "robot", "content": "x"}]}, "/messages/0/role"),
    ("/generate", {"prompt": "a"}, "/messages"),
    ("/generate", {**CHAT, "stop": ["a", "b", "c", "d", "e"]}, "/stop"),
    ("/v1/chat/completions", {"messages": CHAT["messages"]}, "/model"),
    ("/v1/chat/completions", {"model": "gpt-4", "messages": CHAT["messages"]}, "/model"),
    ("/v1/chat/completions", {"model": "qwen_base", "messages": CHAT["messages"], "n": 2}, "/n"),
    ("/v1/chat/completions", {"model": "qwen_base", "messages": CHAT["messages"], "top_k": -1}, "/top_k"),
    ("/v1/chat/completions", {"model": "qwen_base", "messages": CHAT["messages"],
                              "stream_options": {"include_usage": True}}, "/stream_options"),
])
def test_validation_errors(worker, path, body, field):
    reply = post(worker, path, body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "validation_error", error
    assert field in [d["path"] for d in error["details"]], error


def test_auth_unknown_routes_and_no_jobs(worker):
    assert requests.post(worker.url + "/chat", json=CHAT, timeout=10).status_code == 401
    assert post(worker, "/enhance/huge", {"prompt": "a"}).status_code == 404
    assert worker.client.get("/jobs/anything").status_code == 404
    bad = worker.client.post("/chat", data="{", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_json"


def test_openapi_describes_every_chat_route(worker):
    doc = ok(worker.client.get("/openapi.json"))
    for path in ("/enhance/base", "/enhance/instruct", "/enhance", "/chat", "/generate", "/v1/chat/completions",
                 "/v1/models"):
        assert path in doc["paths"], path
    assert doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/chat_completions"}
    assert "temperature" in doc["components"]["schemas"]["chat_enhance"]["properties"]


# ---- chat ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/chat", "/generate"])
def test_chat_happy_path(worker, path):
    body = ok(post(worker, path, CHAT))
    assert body["success"] is True
    assert isinstance(body["response"], str)
    assert 1 <= body["tokens_generated"] <= 8
    assert body["model_info"]["name"] == "qwen_instruct"
    assert body["generation_time"] > 0


def test_temperature_zero_is_deterministic_and_max_tokens_bounds(worker):
    a = ok(post(worker, "/chat", {**CHAT, "temperature": 0, "seed": 1, "max_tokens": 12}))
    b = ok(post(worker, "/chat", {**CHAT, "temperature": 0, "seed": 2, "max_tokens": 12}))
    assert a["response"] == b["response"]
    short = ok(post(worker, "/chat", {**CHAT, "temperature": 0, "max_tokens": 3}))
    assert short["tokens_generated"] <= 3
    assert a["response"].startswith(short["response"])


def test_concurrent_requests_are_batched_with_unchanged_results(worker):
    bodies = [{**CHAT, "seed": i, "max_tokens": 10} for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda b: ok(post(worker, "/chat", b)), bodies))
    assert max(r["model_info"]["batch_size"] for r in replies) > 1
    assert replies[5]["response"] == ok(post(worker, "/chat", bodies[5]))["response"]


# ---- the app's chat calls (shared/reference/real-client.md section 3) ----------------------------

TURNS = [{"role": "system", "content": "You are Mira, a travelling bard."}] + \
    [{"role": "user" if i % 2 == 0 else "assistant", "content": f"line {i} of the story"} for i in range(16)] + \
    [{"role": "user", "content": "What happens next?"}]
SECRET = "project-context-words-that-must-not-be-logged"
APP_BODIES = {
    "roleplay-chat": ("/chat", {"messages": TURNS, "model": "qwen_instruct", "sfw_mode": True, "content_tier": "sfw",
                                "temperature": 0.8, "top_p": 0.9, "max_tokens": 200, "frequency_penalty": 0.2,
                                "presence_penalty": 0.1}),
    "playground-chat": ("/chat", {"messages": TURNS[-3:], "conversation_id": "9b2f6a1e-5d7c-4f0e-9c11-2f1e3b7d8a90",
                                  "project_id": "c0ffee00-1111-2222-3333-444455556666", "context_type": "project",
                                  "project_context": {"name": SECRET, "notes": [SECRET]}, "content_tier": "nsfw",
                                  "temperature": 0.7, "top_p": 0.95, "presence_penalty": 0.6,
                                  "frequency_penalty": 0.25, "nsfw_enforce": True, "nsfw_reason": "the user opted in"}),
    "playground-chat, no project": ("/chat", {"messages": TURNS[-1:], "conversation_id": "c1", "project_id": "p1",
                                              "context_type": "general", "project_context": None,
                                              "content_tier": "sfw", "temperature": 0.7, "top_p": 0.95,
                                              "presence_penalty": 0.6, "frequency_penalty": 0.25}),
    "scene-narrative": ("/chat", {"messages": TURNS[:1] + TURNS[-1:], "max_tokens": 150, "temperature": 0.7,
                                  "top_p": 0.9, "frequency_penalty": 0.3, "presence_penalty": 0.3}),
    # seed added so the random placeholder model's enhancement is never empty by chance (a 422)
    "enhance-prompt": ("/enhance", {"messages": [{"role": "system", "content": SYSTEM},
                                                 {"role": "user", "content": "a fox at dawn"}],
                                    "max_tokens": 500, "temperature": 0.7, "top_p": 0.9, "seed": 11}),
}


# The key each caller holds (real-client.md): the app's CHAT_WORKER_API_KEY and WAN_WORKER_API_KEY, and one to be
# given to the two functions that send none today; WORKER_API_KEYS adds them to WORKER_API_KEY.
APP_KEYS = {"CHAT_WORKER_API_KEY": "app-chat-worker-key-0001", "WAN_WORKER_API_KEY": "app-wan-worker-key-00002",
            "new key for scene-narrative and enhance-prompt": "app-functions-key-000003"}
CALLER_KEY = {"roleplay-chat": "CHAT_WORKER_API_KEY", "playground-chat": "WAN_WORKER_API_KEY",
              "playground-chat, no project": "WAN_WORKER_API_KEY",
              "scene-narrative": "new key for scene-narrative and enhance-prompt",
              "enhance-prompt": "new key for scene-narrative and enhance-prompt"}


@pytest.mark.parametrize("caller", list(APP_BODIES))
def test_the_apps_chat_bodies_are_answered(worker, caller):
    path, body = APP_BODIES[caller]
    key = APP_KEYS[CALLER_KEY[caller]]
    answer = ok(requests.post(worker.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120))
    unknown = requests.post(worker.url + path, json=body, headers={"Authorization": "Bearer not-a-key-of-the-pod-01"},
                            timeout=10)
    assert unknown.status_code == 401
    assert unknown.json()["success"] is False
    assert answer["success"] is True
    assert isinstance(answer["enhanced_prompt" if path == "/enhance" else "response"], str)
    used = answer["parameters"]
    assert used["frequency_penalty"] == body.get("frequency_penalty", 0.0)
    assert used["presence_penalty"] == body.get("presence_penalty", 0.0)
    log = worker.log()
    assert SECRET not in log
    assert "9b2f6a1e" not in log
    assert "the user opted in" not in log


def test_error_answers_carry_success_false(worker):
    reply = post(worker, "/chat", {"messages": [], "max_tokens": 4})
    assert reply.status_code == 400
    assert reply.json()["success"] is False
    assert reply.json()["error"]["code"] == "validation_error"
    assert post(worker, "/enhance/huge", {"prompt": "a"}).json()["success"] is False
    assert requests.post(worker.url + "/chat", json=CHAT, timeout=10).json()["success"] is False  # 401


def test_a_reproducible_request_is_not_batched(worker):
    bodies = [{**CHAT, "seed": i, "max_tokens": 24, "reproducible": i == 3} for i in range(6)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda b: ok(post(worker, "/chat", b)), bodies))
    assert replies[3]["model_info"]["batch_size"] == 1
    assert replies[3]["parameters"]["reproducible"] is True
    assert replies[3]["response"] == ok(post(worker, "/chat", bodies[3]))["response"]


# ---- OpenAI-compatible ---------------------------------------------------------------------------

def test_v1_models_and_plain_completion_over_http(worker):
    models = ok(worker.client.get("/v1/models"))
    assert models["object"] == "list"
    assert {m["id"] for m in models["data"]} == {"qwen_base", "qwen_instruct"}
    sampling = {**CHAT, "temperature": 0.7, "top_p": 0.9}  # the two APIs' defaults differ (chat.json)
    body = ok(post(worker, "/v1/chat/completions", {"model": "qwen_instruct", **sampling}))
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] <= 8
    assert body["choices"][0]["message"]["content"] == ok(post(worker, "/chat", sampling))["response"]


def test_streaming_sse(worker):
    body = {"model": "qwen_instruct", **CHAT, "max_tokens": 12, "stream": True,
            "stream_options": {"include_usage": True}}
    reply = worker.client.post("/v1/chat/completions", json=body, stream=True)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in reply.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert len(events) >= 4
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish in (["length"], ["stop"])
    assert chunks[-1]["usage"]["completion_tokens"] <= 12
    plain = ok(post(worker, "/v1/chat/completions",
                    {k: v for k, v in body.items() if k not in ("stream", "stream_options")}))
    assert content == plain["choices"][0]["message"]["content"]


def test_a_stream_whose_client_goes_away_stops_generating(worker):
    body = {"model": "qwen_instruct", **CHAT, "max_tokens": 512, "stop": ["\u0000never"], "stream": True}
    reply = worker.client.post("/v1/chat/completions", json=body, stream=True)
    lines = reply.iter_lines()
    for _ in range(3):
        next(lines)
    reply.close()
    deadline = time.monotonic() + 20
    while "generation cancelled after" not in worker.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    tokens = int(re.search(r"generation cancelled after (\d+) tokens", worker.log()).group(1))
    assert tokens < 512


def test_official_openai_client(worker):
    client = openai.OpenAI(base_url=worker.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    assert {m.id for m in client.models.list()} == {"qwen_base", "qwen_instruct"}
    completion = client.chat.completions.create(model="qwen_base", messages=CHAT["messages"], max_tokens=10,
                                                seed=9, temperature=0.7, frequency_penalty=0.5, presence_penalty=0.2)
    text = completion.choices[0].message.content
    assert completion.usage.completion_tokens <= 10
    assert completion.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(model="qwen_base", messages=CHAT["messages"], max_tokens=10, seed=9,
                                            temperature=0.7, frequency_penalty=0.5, presence_penalty=0.2, stream=True)
    chunks = list(stream)
    assert len(chunks) >= 3
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="qwen_base", messages=[], max_tokens=3)


# ---- memory --------------------------------------------------------------------------------------

def test_models_load_and_unload_independently(worker):
    c = worker.client
    ok(c.post("/memory/unload", json={"which": "all", "wait_s": 30}))
    status = ok(c.get("/memory/status"))["models"]
    assert not status["qwen_base"]["loaded"]
    assert not status["qwen_instruct"]["loaded"]
    ok(post(worker, "/enhance/base", enhance_body()))  # lazy load of base only
    status = ok(c.get("/memory/status"))["models"]
    assert status["qwen_base"]["loaded"]
    assert status["qwen_base"]["resident_bytes"] > 0
    assert not status["qwen_instruct"]["loaded"]
    assert status["qwen_instruct"]["resident_bytes"] == 0
    ok(c.post("/memory/load?which=qwen_instruct"))
    ok(c.post("/memory/unload", json={"which": "qwen_base", "wait_s": 30}))
    status = ok(c.get("/memory/status"))["models"]
    assert not status["qwen_base"]["loaded"]
    assert status["qwen_instruct"]["loaded"]
    assert status["qwen_instruct"]["resident_bytes"] > 0
    assert c.post("/memory/load", json={"which": "qwen_huge"}).status_code == 400
