"""Chat request bodies (already schema-valid) -> one generation request form shared by every route.

The result is what the engine runs with and what the response reports as used: the model, either
`messages` (rendered by the model's chat template or by the configured base-model template) or raw
`text`, and every sampling parameter, with configured defaults (configuration/chat.json) filling
only what the caller left out. The app's content-policy inputs (`policy`) and its conversation context
(`context`) ride along untouched: the first are for the content policy, the second is the caller's own
and is never logged.
"""
from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from configuration import chat_config, model_config
from configuration.requests.common import resolve_seed
from configuration.schemas.common import field_error
from configuration.schemas.common import without_nulls as without_nulls
from configuration.settings import Settings


class Message(TypedDict):
    role: str
    content: str


POLICY_FIELDS = ("sfw_mode", "content_tier", "nsfw_enforce", "nsfw_reason")
CONTEXT_FIELDS = ("conversation_id", "project_id", "context_type", "project_context")


class PolicyInputs(TypedDict):
    """What the caller says about the content it wants (None: not given); common/policy.py decides."""
    sfw_mode: bool | None
    content_tier: str | None            # sfw | nsfw
    nsfw_enforce: bool | None
    nsfw_reason: str | None


class ChatParams(TypedDict):
    """What the chat engine runs with: every value within the schema's bounds, defaults applied."""
    model: str
    messages: list[Message] | None      # rendered by the model's chat template or configured template
    text: str | None                    # a raw prompt, sent verbatim (exactly one of messages/text)
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    frequency_penalty: float            # OpenAI's definitions, over the row's own output tokens
    presence_penalty: float
    stop: list[str]
    seed: int
    seed_source: str                    # request | random
    stream: bool
    include_usage: bool
    reproducible: bool                  # run alone, never batched with other requests
    policy: PolicyInputs
    context: dict                       # the caller's own (conversation_id, project_id, ...), never logged
    original_prompt: NotRequired[str]           # enhancements only
    target_model: NotRequired[str | None]       # enhancements only


def short_name(model: str) -> str:
    return chat_config()["models"][model]["short_name"]


def model_for_short_name(name: str) -> str:
    for model, cfg in chat_config()["models"].items():
        if cfg["short_name"] == name:
            return model
    raise KeyError(name)


def enhance(body: dict, model: str, settings: Settings) -> ChatParams:
    """/enhance/base, /enhance/instruct (model from the route) and legacy /enhance (model from the body)."""
    cfg = chat_config()
    defaults = dict(cfg["defaults"]["enhance"])
    target = body.get("target_model")
    if target:
        defaults.update(cfg["enhance_targets"][target])
    raw = bool(body.get("raw", False))
    if "messages" in body:
        if "system_prompt" in body:
            raise field_error("/system_prompt", "cannot be combined with messages (put it in the messages)")
        if raw:
            raise field_error("/raw", "cannot be combined with messages (a raw prompt is sent verbatim)")
        messages = _messages(body["messages"])
        if "prompt" in body:
            original = body["prompt"]
        else:
            users = [m["content"] for m in messages if m["role"] == "user"]
            if not users:
                raise field_error("/messages", "needs a user message (the prompt to enhance) when prompt is absent")
            original = users[-1]
        text = None
    elif raw:
        if "system_prompt" in body:
            raise field_error("/system_prompt", "cannot be combined with raw (a raw prompt is sent verbatim)")
        messages, text, original = None, body["prompt"], body["prompt"]
    else:
        messages = ([{"role": "system", "content": body["system_prompt"]}] if "system_prompt" in body else [])
        messages.append({"role": "user", "content": body["prompt"]})
        text, original = None, body["prompt"]
    params = _request(body, model, defaults, settings, messages, text)
    params["original_prompt"] = original
    params["target_model"] = target
    return params


def chat(body: dict, settings: Settings) -> ChatParams:
    """Legacy /chat and /generate."""
    cfg = chat_config()
    model = body.get("model", cfg["legacy_default_model"])
    return _request(body, model, cfg["defaults"]["chat"], settings, _messages(body["messages"]), None)


def completion(body: dict, settings: Settings) -> ChatParams:
    """OpenAI-compatible /v1/chat/completions."""
    body = dict(body)
    if "max_completion_tokens" in body:
        if "max_tokens" in body and body["max_tokens"] != body["max_completion_tokens"]:
            raise field_error("/max_completion_tokens", f"conflicts with max_tokens={body['max_tokens']}")
        body["max_tokens"] = body["max_completion_tokens"]
    if "stream_options" in body and not body.get("stream"):
        raise field_error("/stream_options", "is only used with stream: true")
    params = _request(body, body["model"], chat_config()["defaults"]["openai"], settings,
                      _messages(body["messages"]), None)
    params["stream"] = bool(body.get("stream", False))
    params["include_usage"] = bool(body.get("stream_options", {}).get("include_usage", False))
    return params


def _request(body: dict, model: str, defaults: dict, settings: Settings, messages: list[Message] | None,
             text: str | None) -> ChatParams:
    def pick(name: str) -> Any:  # the caller's JSON value (schema-checked) or the configured default
        return body[name] if name in body else defaults[name]

    limit = model_config(model, settings)["limits"]["max_tokens"]
    seed, seed_source = resolve_seed(body)
    return {
        "model": model, "messages": messages, "text": text,
        # A configured default never exceeds the profile's limit; a caller's value was bounded by the schema.
        "max_tokens": int(body["max_tokens"]) if "max_tokens" in body else min(int(defaults["max_tokens"]), limit),
        "temperature": float(pick("temperature")),
        "top_p": float(pick("top_p")),
        "top_k": int(pick("top_k")),
        "repetition_penalty": float(pick("repetition_penalty")),
        "frequency_penalty": float(pick("frequency_penalty")),
        "presence_penalty": float(pick("presence_penalty")),
        "stop": _stops(body.get("stop"), model, templated=text is None),
        "seed": seed, "seed_source": seed_source,
        "stream": False, "include_usage": False,
        "reproducible": bool(body.get("reproducible", False)),
        "policy": {"sfw_mode": body.get("sfw_mode"), "content_tier": body.get("content_tier"),
                   "nsfw_enforce": body.get("nsfw_enforce"), "nsfw_reason": body.get("nsfw_reason")},
        "context": {name: body[name] for name in CONTEXT_FIELDS if name in body},
    }


def _stops(requested: str | list[str] | None, model: str, templated: bool) -> list[str]:
    """The caller's stop strings plus, when the configured template renders the prompt, the template's
    own turn markers (a base model would otherwise write the next turn itself)."""
    stops = [requested] if isinstance(requested, str) else list(requested or [])
    rendering = chat_config()["models"][model]
    if templated and rendering["rendering"] == "template":
        stops += rendering["template"].get("stop", [])
    return list(dict.fromkeys(stops))


def _messages(messages: list[dict]) -> list[Message]:
    """Messages with OpenAI text parts joined into plain strings."""
    flat: list[Message] = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = "".join(part["text"] for part in content)
        flat.append({"role": message["role"], "content": content})
    return flat
