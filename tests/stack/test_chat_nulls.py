"""Chat bodies as the app's browser-built callers send them: an optional field sent as JSON `null` means
absent (`project_id: null`, `project_context: null`, `conversation_id: null`, `nsfw_reason: null`), on
/chat, /enhance and /v1/chat/completions; a required one sent as null is still a 400 naming it."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from configuration import requests
from configuration.requests import schema_of
from configuration.requests.common import ValidationFailed
from configuration.settings import Settings
from tests.support import Client

SETTINGS = Settings()
MESSAGES = [{"role": "system", "content": "You are a friendly guide."}, {"role": "user", "content": "hello"}]
# A valid body per schema, with every optional field the app's callers send (real-client.md section 3).
BODIES = {
    "chat": {"messages": MESSAGES, "model": "qwen_instruct", "sfw_mode": True, "content_tier": "sfw",
             "temperature": 0.8, "top_p": 0.9, "max_tokens": 8, "frequency_penalty": 0.2, "presence_penalty": 0.1,
             "conversation_id": "c1", "project_id": "p1", "context_type": "general", "project_context": {"a": 1},
             "nsfw_enforce": False, "nsfw_reason": "none", "seed": 4},
    "enhance_legacy": {"messages": MESSAGES, "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "seed": 4,
                       "model": "qwen_instruct", "project_id": "p1"},
    "completions": {"model": "qwen_instruct", "messages": MESSAGES, "max_tokens": 8, "seed": 4, "stream": False,
                    "temperature": 0.5, "n": 1, "logprobs": False},
}
REQUIRED = {"chat": {"messages"}, "enhance_legacy": set(), "completions": {"model", "messages"}}


def params_of(name: str, body: dict) -> dict:
    """What the route runs the body with: its request model, then to_params (the legacy /enhance's model is
    the body's)."""
    return dict(requests.normalise(f"chat.{name}", body, SETTINGS))


@hsettings(max_examples=80, deadline=None)
@given(data=st.data())
def test_property_null_is_absent_in_every_chat_body(data):
    name = data.draw(st.sampled_from(sorted(BODIES)))
    body = dict(BODIES[name])
    optional = sorted(set(schema_of(f"chat.{name}", SETTINGS)["properties"]) - REQUIRED[name] - {"prompt", "messages"})
    chosen = data.draw(st.lists(st.sampled_from(optional), unique=True, max_size=len(optional)))
    with_nulls = {**body, **dict.fromkeys(chosen)}
    without = {k: v for k, v in body.items() if k not in chosen}
    got, expected = params_of(name, with_nulls), params_of(name, without)
    if "seed" in chosen:  # an absent seed is drawn at random either way
        assert got.pop("seed_source") == expected.pop("seed_source") == "random"
        got.pop("seed"), expected.pop("seed")
    assert got == expected


@pytest.mark.parametrize(("name", "field"),
                         [("chat", "messages"), ("completions", "model"), ("completions", "messages")])
def test_a_required_field_sent_as_null_is_refused_naming_it(name, field):
    with pytest.raises(ValidationFailed) as info:
        requests.check(f"chat.{name}", {**BODIES[name], field: None}, SETTINGS)
    assert f"/{field}" in {d["path"] for d in info.value.details}


def test_enhance_needs_a_prompt_or_messages_that_are_not_null():
    with pytest.raises(ValidationFailed):
        requests.check("chat.enhance_legacy", {"prompt": None, "messages": None}, SETTINGS)
    requests.check("chat.enhance_legacy", {"prompt": "a fox", "messages": None}, SETTINGS)


@pytest.fixture(scope="module")
def chat(shared_pod) -> Client:
    """The session's shared pod's chat worker (gunicorn, started by the orchestrator): these bodies only read."""
    return Client(f"http://127.0.0.1:{shared_pod.ports['chat']}")


def test_the_apps_bodies_with_nulls_are_answered(chat):
    playground = {"messages": MESSAGES, "conversation_id": None, "project_id": None, "context_type": "general",
                  "project_context": None, "content_tier": "sfw", "temperature": 0.7, "top_p": 0.95,
                  "presence_penalty": 0.6, "frequency_penalty": 0.25, "nsfw_enforce": None, "nsfw_reason": None,
                  "max_tokens": 8, "model": None, "seed": None}
    reply = chat.post("/chat", json=playground)
    assert reply.status_code == 200, reply.text
    assert reply.json()["success"] is True
    assert reply.json()["response"].strip()
    enhance = {"messages": MESSAGES, "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "model": None,
               "project_context": None, "target_model": None, "system_prompt": None}
    # The app sends no seed: the tiny random model sometimes ends at once (422 empty_enhancement, whose answer
    # says to retry); the app's retry is what gets the enhancement. Any other refusal fails at once.
    for _ in range(3):
        reply = chat.post("/enhance", json=enhance)
        if reply.status_code != 422 or reply.json()["error"]["code"] != "empty_enhancement":
            break
    assert reply.status_code == 200, reply.text
    assert reply.json()["success"] is True
    assert reply.json()["enhanced_prompt"].strip()
    completion = {"model": "qwen_instruct", "messages": MESSAGES, "max_tokens": 8, "stream": None,
                  "stream_options": None, "temperature": None, "stop": None, "n": None, "logprobs": None}
    reply = chat.post("/v1/chat/completions", json=completion)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] is not None
    refused = chat.post("/v1/chat/completions", json={**completion, "messages": None})
    assert refused.status_code == 400
    assert "/messages" in refused.text
