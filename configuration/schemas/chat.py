"""Chat worker request schemas: enhancement, legacy chat, and the OpenAI-compatible chat completion.

Every sampling parameter is validated here, with bounds from configuration/models.json (`max_tokens`
per profile). What each one does is in docs/API.md. Every optional field also accepts `null`, which
means absent (the app's browser-built bodies pass `project_context: null` and the like); the routes
drop such fields (`configuration.params.chat.without_nulls`) before reading the body.
"""
from __future__ import annotations

from configuration import chat_config, model_config
from configuration.schemas.common import DIALECT, PROMPT, SEED, nullable
from configuration.settings import Settings

TEXT = {"type": "string", "maxLength": 100000}
CONTENT_PART = {
    "type": "object", "required": ["type", "text"], "additionalProperties": False,
    "properties": {"type": {"const": "text"}, "text": TEXT},
}
MESSAGE = {
    "type": "object", "required": ["role", "content"], "additionalProperties": False,
    "properties": {
        "role": {"enum": ["system", "user", "assistant"]},
        # One node with type-specific keywords (not anyOf) so an error names the real problem.
        "content": {"type": ["string", "array"], "maxLength": 100000, "items": CONTENT_PART, "maxItems": 64,
                    "description": "Text, or OpenAI-style text parts (joined without separator)."},
    },
}
MESSAGES = {"type": "array", "items": MESSAGE, "minItems": 1, "maxItems": 256,
            "description": "The conversation, oldest first; the model writes the next assistant turn."}
STOP_STRING = {"type": "string", "minLength": 1, "maxLength": 64}
STOP = {"type": ["string", "array"], "minLength": 1, "maxLength": 64, "items": STOP_STRING, "maxItems": 4,
        "description": "A string or up to 4; generation ends before the first occurrence of any (not included)."}


def _sampling(max_tokens: int) -> dict:
    return {
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": max_tokens,
                       "description": f"Most tokens generated (at most {max_tokens} on this profile)."},
        "temperature": {"type": "number", "minimum": 0.0, "maximum": 2.0,
                        "description": "0 means greedy decoding (deterministic, seed unused)."},
        "top_p": {"type": "number", "exclusiveMinimum": 0.0, "maximum": 1.0,
                  "description": "Nucleus sampling: the smallest set of tokens whose probability reaches top_p."},
        "top_k": {"type": "integer", "minimum": 0, "maximum": 1000,
                  "description": "Sample among the k most likely tokens; 0 means no limit."},
        "repetition_penalty": {"type": "number", "exclusiveMinimum": 0.0, "maximum": 3.0,
                               "description": "Divides positive (multiplies negative) logits of tokens already in the "
                                              "prompt or output; 1 is off."},
        "frequency_penalty": {"type": "number", "minimum": -2.0, "maximum": 2.0,
                              "description": "OpenAI's: subtracts (times this) how often a token already appears in "
                                             "the output from its logit; 0 is off."},
        "presence_penalty": {"type": "number", "minimum": -2.0, "maximum": 2.0,
                             "description": "OpenAI's: subtracts this from the logit of every token already in the "
                                            "output; 0 is off."},
        "stop": STOP,
        "seed": {**SEED, "description": "Random (and reported) when absent. Same seed and parameters give the same "
                                        "text alone; batched with other requests the text can differ "
                                        "(docs/ENGINES.md), unless `reproducible` is true."},
        "reproducible": {"type": "boolean",
                         "description": "Run this request alone, never batched with others, so the same seed and "
                                        "parameters always give the same text (slower under load)."},
    }


# What the app's callers send besides the generation parameters (docs/API.md).
POLICY = {
    "sfw_mode": {"type": "boolean", "description": "Content-policy input: true asks for sfw, false for nsfw."},
    "content_tier": {"enum": ["sfw", "nsfw"], "description": "Content-policy input: the tier the caller asks for."},
    "nsfw_enforce": {"type": "boolean", "description": "Content-policy input: the caller insists on the nsfw tier."},
    "nsfw_reason": {"type": "string", "maxLength": 1000, "description": "Content-policy input: why (the caller's "
                                                                        "words)."},
}
CONTEXT = {
    "conversation_id": {"type": "string", "maxLength": 200, "description": "Caller context; never logged."},
    "project_id": {"type": "string", "maxLength": 200, "description": "Caller context; never logged."},
    "context_type": {"type": "string", "maxLength": 200, "description": "Caller context; never logged."},
    "project_context": {"type": ["object", "null"], "maxProperties": 256,
                        "description": "Caller context (any JSON object, or null); never logged."},
}


def _optional(properties: dict, required: tuple[str, ...] = ()) -> dict:
    """Every property but the required ones also accepts `null` (absent)."""
    return {name: prop if name in required else nullable(prop) for name, prop in properties.items()}


def _model_enum() -> list[str]:
    return sorted(chat_config()["models"])


def schemas(settings: Settings) -> dict[str, dict]:
    max_tokens = min(model_config(m, settings)["limits"]["max_tokens"] for m in _model_enum())
    sampling = _sampling(max_tokens)
    enhance_properties = {
        "prompt": {**PROMPT, "description": "The prompt to enhance; reported back as original_prompt."},
        "system_prompt": {"type": "string", "maxLength": 100000,
                          "description": "Instructions for the model, from the caller (the worker has none of its "
                                         "own)."},
        "messages": {**MESSAGES, "description": "A full conversation instead of system_prompt + prompt; "
                                                "original_prompt is then `prompt`, else the last user message."},
        "raw": {"type": "boolean",
                "description": "Send `prompt` to the model verbatim: no system prompt, no template."},
        **sampling,
        "target_model": {"enum": sorted(chat_config()["enhance_targets"]),
                         "description": "The generator the prompt is for; selects configured defaults (chat.json "
                                        "enhance_targets)."},
        **POLICY,
        **CONTEXT,
    }
    # `null` is absent: a prompt or messages that are null do not count.
    needs_text = {"anyOf": [{"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
                            {"required": ["messages"], "properties": {"messages": {"type": "array"}}}]}
    enhance = {
        "$schema": DIALECT, "title": "Prompt enhancement", "type": "object", "additionalProperties": False,
        "properties": _optional(enhance_properties), **needs_text,
    }
    enhance_legacy = {
        "$schema": DIALECT, "title": "Prompt enhancement (legacy /enhance)", "type": "object",
        "additionalProperties": False, **needs_text,
        "properties": _optional({**enhance_properties,
                                 "model": {"enum": _model_enum(),
                                           "description": f"Default {chat_config()['legacy_default_model']}."}}),
    }
    chat = {
        "$schema": DIALECT, "title": "Chat (legacy /chat and /generate)", "type": "object",
        "additionalProperties": False, "required": ["messages"],
        "properties": _optional({"messages": MESSAGES, **sampling,
                                 "model": {"enum": _model_enum(),
                                           "description": f"Default {chat_config()['legacy_default_model']}."},
                                 **POLICY, **CONTEXT}, required=("messages",)),
    }
    completions = {
        "$schema": DIALECT, "title": "OpenAI-compatible chat completion", "type": "object",
        "additionalProperties": False, "required": ["model", "messages"],
        "properties": _optional({
            "model": {"enum": _model_enum(), "description": "An id from GET /v1/models."},
            "messages": MESSAGES,
            **sampling,
            "max_completion_tokens": {**sampling["max_tokens"], "description": "OpenAI's newer name for max_tokens."},
            "stream": {"type": "boolean", "description": "Server-sent events, ending with `data: [DONE]`."},
            "stream_options": {"type": "object", "additionalProperties": False,
                               "properties": {"include_usage": {"type": "boolean"}}},
            "n": {"const": 1, "description": "One choice per request (the only value served)."},
            "logprobs": {"const": False, "description": "Not implemented; only false is accepted."},
        }, required=("model", "messages")),
    }
    return {"enhance": enhance, "enhance_legacy": enhance_legacy, "chat": chat, "completions": completions}
