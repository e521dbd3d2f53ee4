"""The chat worker's requests: prompt enhancement (`chat.enhance`, `chat.enhance_legacy`), legacy chat
(`chat.chat`) and the OpenAI-compatible chat completion (`chat.completions`): bounds, cross-field rules and
the conversion to the one generation form every route runs (`ChatParams`), one model per route.

Every optional field also accepts `null`, which means absent (the app's browser-built bodies pass
`project_context: null` and the like): a model holds None for it, as for a field left out. `max_tokens` is
bounded per profile (configuration/models.json), so the models are built per profile (`_requests_for`).
What each sampling parameter does is in docs/API.md. The result of `to_params` is what the engine runs with
and what the response reports as used: the model, either `messages` (rendered by the model's chat template or
by the configured base-model template) or raw `text`, every sampling parameter with the configured defaults
(configuration/chat.json) filling only what the caller left out, and the app's content-policy inputs
(`policy`) and conversation context (`context`, the caller's own, never logged) carried along untouched.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, NotRequired, TypedDict, cast

from pydantic import BaseModel, ConfigDict, create_model, model_validator

from configuration import chat_config, model_config
from configuration.requests.common import PROMPT, SEED, field_error, nullable, resolve_seed
from configuration.requests.fields import STRICT_OBJECT, Schema
from configuration.settings import Settings


class Message(TypedDict):
    role: str
    content: str


class PolicyInputs(TypedDict):
    """What the caller says about the content it wants (None: not given); common/policy.py decides."""
    sfw_mode: bool | None
    content_tier: str | None            # sfw | nsfw
    nsfw_enforce: bool | None
    nsfw_reason: str | None


class ChatParams(TypedDict):
    """What the chat engine runs with: every value within the request's bounds, defaults applied."""
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


# ---- fragments ----------------------------------------------------------------------------------------------

TEXT = {"type": "string", "maxLength": 100000}
CONTENT_PART = {"type": "object", "required": ["type", "text"], "additionalProperties": False,
                "properties": {"type": {"const": "text"}, "text": TEXT}}
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
SYSTEM_PROMPT = {"type": "string", "maxLength": 100000,
                 "description": "Instructions for the model, from the caller (the worker has none of its own)."}
# The sampling parameters every route takes, but `max_tokens` (its bound is the profile's: `max_tokens`).
SAMPLING: dict[str, dict] = {
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
    "stop": {"type": ["string", "array"], "minLength": 1, "maxLength": 64, "items": STOP_STRING, "maxItems": 4,
             "description": "A string or up to 4; generation ends before the first occurrence of any (not "
                            "included)."},
    "seed": {**SEED, "description": "Random (and reported) when absent. Same seed and parameters give the same "
                                    "text alone; batched with other requests the text can differ "
                                    "(docs/ENGINES.md), unless `reproducible` is true."},
    "reproducible": {"type": "boolean",
                     "description": "Run this request alone, never batched with others, so the same seed and "
                                    "parameters always give the same text (slower under load)."},
}
CALLER_CONTEXT = "Caller context; never logged."


def max_tokens(bound: int) -> dict:
    """The `max_tokens` fragment of a profile whose chat models generate at most `bound` tokens."""
    return {"type": "integer", "minimum": 1, "maximum": bound,
            "description": f"Most tokens generated (at most {bound} on this profile)."}


def max_tokens_bound(settings: Settings) -> int:
    """The most tokens every chat model of this profile may generate (configuration/models.json)."""
    return min(model_config(m, settings)["limits"]["max_tokens"] for m in chat_config()["models"])


def _optional(fragment: dict) -> Schema:
    """A field's Schema that also takes `null` (absent)."""
    return Schema(nullable(fragment))


# ---- the models' parts (each a set of fields; a model lists its parts last-first, as pydantic orders the
# fields of its bases from the last base to the first) -----------------------------------------------------

class _Messages(BaseModel):
    model_config = STRICT_OBJECT

    messages: Annotated[list[dict], Schema(MESSAGES)]


class _Sampling(BaseModel):
    """The sampling parameters, and the conversion every route shares."""
    model_config = STRICT_OBJECT

    max_tokens: int | None = None           # bounded per profile (`_requests_for`)
    temperature: Annotated[float | None, _optional(SAMPLING["temperature"])] = None
    top_p: Annotated[float | None, _optional(SAMPLING["top_p"])] = None
    top_k: Annotated[int | None, _optional(SAMPLING["top_k"])] = None
    repetition_penalty: Annotated[float | None, _optional(SAMPLING["repetition_penalty"])] = None
    frequency_penalty: Annotated[float | None, _optional(SAMPLING["frequency_penalty"])] = None
    presence_penalty: Annotated[float | None, _optional(SAMPLING["presence_penalty"])] = None
    stop: Annotated[str | list[str] | None, _optional(SAMPLING["stop"])] = None
    seed: Annotated[int | None, _optional(SAMPLING["seed"])] = None
    reproducible: Annotated[bool | None, _optional(SAMPLING["reproducible"])] = None

    def _params(self, model: str, defaults: Any, settings: Settings, messages: list[Message] | None,
                text: str | None, caller: tuple[PolicyInputs, dict] | None = None) -> ChatParams:
        """The engine's parameters: the caller's value of each, else the configured default. `caller`: the
        content-policy inputs and the caller's context, on the routes that take them."""
        def pick(name: str) -> Any:
            value = getattr(self, name)
            return defaults[name] if value is None else value

        limit = model_config(model, settings)["limits"]["max_tokens"]
        seed, seed_source = resolve_seed({"seed": self.seed})
        policy, context = caller or (PolicyInputs(sfw_mode=None, content_tier=None, nsfw_enforce=None,
                                                  nsfw_reason=None), {})
        return {
            "model": model, "messages": messages, "text": text,
            # A configured default never exceeds the profile's limit; a caller's value is bounded by the model.
            "max_tokens": self.max_tokens if self.max_tokens is not None else min(int(defaults["max_tokens"]),
                                                                                  limit),
            "temperature": float(pick("temperature")),
            "top_p": float(pick("top_p")),
            "top_k": int(pick("top_k")),
            "repetition_penalty": float(pick("repetition_penalty")),
            "frequency_penalty": float(pick("frequency_penalty")),
            "presence_penalty": float(pick("presence_penalty")),
            "stop": _stops(self.stop, model, templated=text is None),
            "seed": seed, "seed_source": seed_source,
            "stream": False, "include_usage": False,
            "reproducible": bool(self.reproducible),
            "policy": policy,
            "context": context,
        }


class _Target(BaseModel):
    model_config = STRICT_OBJECT

    target_model: str | None = None         # an enhance target of configuration/chat.json (`_requests_for`)


class _Caller(BaseModel):
    """What the app's callers send besides the generation parameters (docs/API.md): content-policy inputs and
    their own context."""
    model_config = STRICT_OBJECT

    sfw_mode: Annotated[bool | None, _optional({
        "type": "boolean", "description": "Content-policy input: true asks for sfw, false for nsfw."})] = None
    content_tier: Annotated[str | None, _optional({
        "enum": ["sfw", "nsfw"], "description": "Content-policy input: the tier the caller asks for."})] = None
    nsfw_enforce: Annotated[bool | None, _optional({
        "type": "boolean", "description": "Content-policy input: the caller insists on the nsfw tier."})] = None
    nsfw_reason: Annotated[str | None, _optional({
        "type": "string", "maxLength": 1000,
        "description": "Content-policy input: why (the caller's words)."})] = None
    conversation_id: Annotated[str | None, _optional({"type": "string", "maxLength": 200,
                                                      "description": CALLER_CONTEXT})] = None
    project_id: Annotated[str | None, _optional({"type": "string", "maxLength": 200,
                                                 "description": CALLER_CONTEXT})] = None
    context_type: Annotated[str | None, _optional({"type": "string", "maxLength": 200,
                                                   "description": CALLER_CONTEXT})] = None
    project_context: Annotated[dict | None, _optional({
        "type": ["object", "null"], "maxProperties": 256,
        "description": "Caller context (any JSON object, or null); never logged."})] = None

    def caller(self) -> tuple[PolicyInputs, dict]:
        """(the content-policy inputs, the caller's context): what the route carries along untouched."""
        policy = PolicyInputs(sfw_mode=self.sfw_mode, content_tier=self.content_tier,
                              nsfw_enforce=self.nsfw_enforce, nsfw_reason=self.nsfw_reason)
        context = {name: getattr(self, name) for name in ("conversation_id", "project_id", "context_type",
                                                          "project_context") if getattr(self, name) is not None}
        return policy, context


class _LegacyModel(BaseModel):
    model_config = STRICT_OBJECT

    model: str | None = None                # a chat model, default the legacy one (`_requests_for`)

    def chosen_model(self) -> str:
        return self.model or chat_config()["legacy_default_model"]


class _EnhanceText(BaseModel):
    model_config = STRICT_OBJECT

    prompt: Annotated[str | None, _optional({
        **PROMPT, "description": "The prompt to enhance; reported back as original_prompt."})] = None
    system_prompt: Annotated[str | None, _optional(SYSTEM_PROMPT)] = None
    messages: Annotated[list[dict] | None, _optional({
        **MESSAGES, "description": "A full conversation instead of system_prompt + prompt; original_prompt is "
                                   "then `prompt`, else the last user message."})] = None
    raw: Annotated[bool | None, _optional({
        "type": "boolean", "description": "Send `prompt` to the model verbatim: no system prompt, no "
                                          "template."})] = None


# ---- the requests -------------------------------------------------------------------------------------------

_ENHANCE_RULES = ("Cross-field rules (refused with 400 at the field named): `prompt` or `messages` is needed "
                  "(`null` is absent); `system_prompt` and `raw` cannot be combined with `messages`, nor "
                  "`system_prompt` with `raw`; without `prompt`, `messages` needs a user message (the prompt to "
                  "enhance).")
# The schema's own statement of the first rule: `null` is absent, so a null prompt or messages does not count.
_NEEDS_TEXT: dict[str, Any] = {"anyOf": [{"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
                                          {"required": ["messages"], "properties": {"messages": {"type": "array"}}}]}


class _Enhancement(_Caller, _Target, _Sampling, _EnhanceText):
    """An enhancement's rules and conversion; the model comes from the route (`EnhanceRequest`) or the body
    (`EnhanceLegacyRequest`)."""

    @model_validator(mode="after")
    def _agree(self) -> _Enhancement:
        """The cross-field rules, in the order the contract reports them (the first one broken is the answer)."""
        if self.prompt is None and self.messages is None:
            # In jsonschema's words for the schema's anyOf: the deepest failure of its first branch that has one
            if "prompt" in self.model_fields_set:
                raise field_error("/prompt", "None is not of type 'string'")
            if "messages" in self.model_fields_set:
                raise field_error("/messages", "None is not of type 'array'")
            raise field_error("/prompt", "is required")
        if self.messages is not None:
            if self.system_prompt is not None:
                raise field_error("/system_prompt", "cannot be combined with messages (put it in the messages)")
            if self.raw:
                raise field_error("/raw", "cannot be combined with messages (a raw prompt is sent verbatim)")
            if self.prompt is None and not any(m["role"] == "user" for m in self.messages):
                raise field_error("/messages", "needs a user message (the prompt to enhance) when prompt is absent")
        elif self.raw and self.system_prompt is not None:
            raise field_error("/system_prompt", "cannot be combined with raw (a raw prompt is sent verbatim)")
        return self

    def _enhance(self, model: str, settings: Settings) -> ChatParams:
        cfg = chat_config()
        defaults = dict(cfg["defaults"]["enhance"])
        if self.target_model:
            defaults.update(cfg["enhance_targets"][self.target_model])
        text, messages = None, None
        if self.messages is not None:
            messages = _flat(self.messages)
            original = self.prompt if self.prompt is not None else \
                [m["content"] for m in messages if m["role"] == "user"][-1]
        else:
            original = cast(str, self.prompt)  # the first rule: without messages, a prompt
            if self.raw:
                text = original
            else:
                system: list[Message] = [] if self.system_prompt is None else \
                    [{"role": "system", "content": self.system_prompt}]
                messages = [*system, {"role": "user", "content": original}]
        params = self._params(model, defaults, settings, messages, text, self.caller())
        params["original_prompt"] = original
        params["target_model"] = self.target_model
        return params


class EnhanceRequest(_Enhancement):
    """Body of POST /enhance/base and /enhance/instruct (the model is the route's)."""
    model_config = ConfigDict(**STRICT_OBJECT, title="Prompt enhancement",
                              json_schema_extra={"description": _ENHANCE_RULES, **_NEEDS_TEXT})

    def to_params(self, settings: Settings, model: str) -> ChatParams:
        return self._enhance(model, settings)


class EnhanceLegacyRequest(_LegacyModel, _Enhancement):
    """Body of the legacy POST /enhance (the model is the body's `model`, else the legacy default)."""
    model_config = ConfigDict(**STRICT_OBJECT, title="Prompt enhancement (legacy /enhance)",
                              json_schema_extra={"description": _ENHANCE_RULES, **_NEEDS_TEXT})

    def to_params(self, settings: Settings) -> ChatParams:
        return self._enhance(self.chosen_model(), settings)


class ChatRequest(_Caller, _LegacyModel, _Sampling, _Messages):
    """Body of the legacy POST /chat and /generate."""
    model_config = ConfigDict(**STRICT_OBJECT, title="Chat (legacy /chat and /generate)", json_schema_extra={
        "description": "Cross-field rules: none between fields."})

    def to_params(self, settings: Settings) -> ChatParams:
        model = self.chosen_model()
        return self._params(model, chat_config()["defaults"]["chat"], settings, _flat(self.messages), None,
                            self.caller())


class _OpenAIModel(BaseModel):
    model_config = STRICT_OBJECT

    model: str                              # a chat model (`_requests_for`)


class CompletionRequest(_Sampling, _Messages, _OpenAIModel):
    """Body of POST /v1/chat/completions (OpenAI-compatible)."""
    model_config = ConfigDict(**STRICT_OBJECT, title="OpenAI-compatible chat completion", json_schema_extra={
        "description": "Cross-field rules (refused with 400 at the field named): `max_completion_tokens` and "
                       "`max_tokens` must agree when both are sent; `stream_options` needs `stream: true`."})

    max_completion_tokens: int | None = None  # bounded per profile (`_requests_for`)
    stream: Annotated[bool | None, _optional({
        "type": "boolean", "description": "Server-sent events, ending with `data: [DONE]`."})] = None
    stream_options: Annotated[dict | None, _optional({
        "type": "object", "additionalProperties": False, "properties": {"include_usage": {"type": "boolean"}}})] = None
    n: Annotated[int | None, _optional({
        "const": 1, "description": "One choice per request (the only value served)."})] = None
    logprobs: Annotated[bool | None, _optional({
        "const": False, "description": "Not implemented; only false is accepted."})] = None

    @model_validator(mode="after")
    def _agree(self) -> CompletionRequest:
        if self.max_completion_tokens is not None and self.max_tokens is not None \
                and self.max_tokens != self.max_completion_tokens:
            raise field_error("/max_completion_tokens", f"conflicts with max_tokens={self.max_tokens}")
        if self.stream_options is not None and not self.stream:
            raise field_error("/stream_options", "is only used with stream: true")
        return self

    def to_params(self, settings: Settings) -> ChatParams:
        # OpenAI's newer name, read as max_tokens (the rule above: they agree when both are sent)
        body = self if self.max_completion_tokens is None else \
            self.model_copy(update={"max_tokens": self.max_completion_tokens})
        params = body._params(self.model, chat_config()["defaults"]["openai"], settings, _flat(self.messages), None)
        params["stream"] = bool(self.stream)
        params["include_usage"] = bool((self.stream_options or {}).get("include_usage", False))
        return params


@functools.lru_cache(maxsize=8)
def _requests_for(bound: int) -> dict[str, type[BaseModel]]:
    """The four request models of a profile whose chat models generate at most `bound` tokens."""
    cfg = chat_config()
    models = sorted(cfg["models"])
    # (annotations built at run time: typed Any, as create_model takes them)
    tokens: Any = Annotated[int | None, _optional(max_tokens(bound))]
    completion_tokens: Any = Annotated[int | None, _optional({**max_tokens(bound), "description":
                                                              "OpenAI's newer name for max_tokens."})]
    target: Any = Annotated[str | None, _optional({
        "enum": sorted(cfg["enhance_targets"]), "description": "The generator the prompt is for; selects "
                                                               "configured defaults (chat.json enhance_targets)."})]
    legacy: Any = Annotated[str | None, _optional({"enum": models,
                                                   "description": f"Default {cfg['legacy_default_model']}."})]
    openai: Any = Annotated[str, Schema({"enum": models, "description": "An id from GET /v1/models."})]
    return {
        "chat.enhance": create_model("EnhanceRequest", __base__=EnhanceRequest, max_tokens=(tokens, None),
                                     target_model=(target, None)),
        "chat.enhance_legacy": create_model("EnhanceLegacyRequest", __base__=EnhanceLegacyRequest,
                                            max_tokens=(tokens, None), target_model=(target, None),
                                            model=(legacy, None)),
        "chat.chat": create_model("ChatRequest", __base__=ChatRequest, max_tokens=(tokens, None),
                                  model=(legacy, None)),
        "chat.completions": create_model("CompletionRequest", __base__=CompletionRequest, model=(openai, ...),
                                         max_tokens=(tokens, None),
                                         max_completion_tokens=(completion_tokens, None)),
    }


def _request(name: str) -> Callable[[Settings], type[BaseModel]]:
    def of_profile(settings: Settings) -> type[BaseModel]:
        return _requests_for(max_tokens_bound(settings))[name]
    of_profile.__doc__ = f"The {name} request model of this profile (its max_tokens bound)."
    return of_profile


# request schema name -> the factory of its model for a profile (configuration.requests.MODELS)
CHAT_REQUESTS = {name: _request(name) for name in ("chat.enhance", "chat.enhance_legacy", "chat.chat",
                                                    "chat.completions")}


# ---- conversion ---------------------------------------------------------------------------------------------

def short_name(model: str) -> str:
    return chat_config()["models"][model]["short_name"]


def model_for_short_name(name: str) -> str:
    for model, cfg in chat_config()["models"].items():
        if cfg["short_name"] == name:
            return model
    raise KeyError(name)


def _stops(requested: str | list[str] | None, model: str, templated: bool) -> list[str]:
    """The caller's stop strings plus, when the configured template renders the prompt, the template's
    own turn markers (a base model would otherwise write the next turn itself)."""
    stops = [requested] if isinstance(requested, str) else list(requested or [])
    rendering = chat_config()["models"][model]
    if templated and rendering["rendering"] == "template":
        stops += rendering["template"].get("stop", [])
    return list(dict.fromkeys(stops))


def _flat(messages: list[dict]) -> list[Message]:
    """Messages with OpenAI text parts joined into plain strings."""
    flat: list[Message] = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = "".join(part["text"] for part in content)
        flat.append({"role": message["role"], "content": content})
    return flat
