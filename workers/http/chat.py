"""Chat worker routes: thin translations of each API onto `ChatEngine.submit` (one generation path).

- POST /enhance/base, /enhance/instruct, legacy /enhance: prompt enhancement (cleaned output; an empty
  enhancement is a 422, never the original prompt passed off as one).
- POST /chat, legacy /generate: `messages` -> `response`.
- POST /v1/chat/completions (plain and `stream: true` server-sent events), GET /v1/models: OpenAI.

The content policy (docs/POLICY.md) reads every request's messages before the model (422
`content_policy`) and its output after: an enhancement that crosses it answers 422, a chat reply is
replaced by the refusal text (`finish_reason: content_filter`), a stream sends only words that passed.
The text classifier (workers/runtime/text_safety.py) reads the same texts after the word rules; its
checks are listed in the answer's `content_policy.checks` (a stream's output is judged by it at the end).
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Protocol, cast, runtime_checkable

from flask import Blueprint, Response, g, jsonify

from common import policy
from common.body import json_body
from common.errors import (
    EMPTY_ENHANCEMENT,
    GENERATION_FAILED,
    NOT_FOUND,
    VALIDATION_ERROR,
    ApiError,
    DomainError,
    http_error,
)
from configuration import chat_config, requests
from configuration.openapi import RouteTable
from configuration.requests.chat import ChatParams, model_for_short_name, short_name
from configuration.requests.common import ValidationFailed
from workers.engines.chat import Generation, GenerationResult, clean_enhancement
from workers.http.common import require_ready, state
from workers.runtime import text_safety

bp = Blueprint("chat", __name__)


@runtime_checkable
class ChatService(Protocol):
    """What these routes ask of their worker's engine (workers/engines/chat `ChatEngine`): a request prepared
    (tokenised, checked against the model's limit) in the caller's thread, then submitted to its model's
    batcher. No jobs: it is not the runtime's JobEngine and has no `run`."""

    def model_names(self) -> list[str]: ...
    def prepare(self, params: ChatParams) -> Generation: ...
    def submit(self, generation: Generation) -> Generation: ...
    def model_info(self, model: str) -> dict: ...


def _engine() -> ChatService:
    engine = state().engine
    if not isinstance(engine, ChatService):  # the registry gives these routes to the chat worker alone
        raise RuntimeError(f"chat routes on a worker whose engine ({type(engine).__name__}) serves no chat")
    return engine
_STARTED_AT = int(time.time())
_PARAMETERS = ("max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "frequency_penalty",
               "presence_penalty", "stop", "seed", "seed_source", "reproducible")


@bp.after_request
def _always_success(response: Response) -> Response:
    """Every JSON answer of the chat routes carries `success` (the app's callers read it), errors too."""
    if response.is_json and response.status_code >= 400:
        body = response.get_json(silent=True)
        if isinstance(body, dict) and "success" not in body:
            response.set_data(json.dumps({"success": False, **body}))
    return response


# ---- one path for every route ------------------------------------------------------------------

def _submit(params: ChatParams) -> Generation:
    """Checks the request against the model (400s), then queues it for its model's batcher (503 when full)."""
    require_ready()
    _check_input(params)
    try:
        engine = _engine()
        return engine.submit(engine.prepare(params))
    except Exception as exc:  # mapped to the contract's error form
        raise _api_error(exc) from None


def _api_error(exc: object) -> ApiError | ValidationFailed:
    """How a failed generation is answered (`exc`: what the generation failed with)."""
    if isinstance(exc, (ValidationFailed, ApiError)):
        return exc
    if isinstance(exc, DomainError):
        return http_error(exc)
    return ApiError(500, GENERATION_FAILED, "generation failed; see the worker log")


def _run(params: ChatParams) -> GenerationResult:
    generation = _submit(params)
    try:
        return generation.wait()
    except Exception as exc:  # mapped to the contract's error form
        raise _api_error(exc) from None


def _tier(params: ChatParams) -> str:
    return policy.chat_tier(dict(params["policy"]), state().settings.content_tier_default)


def _check_input(params: ChatParams) -> None:
    """Every message (system prompts too) or the raw prompt, read as one text; 422 content_policy."""
    stage = "enhance_input" if "original_prompt" in params else "chat_input"
    texts = policy.conversation(params["messages"], params["text"])
    policy.require(policy.check_text(texts, tier=_tier(params), stage=stage))
    text_safety.require(_classified(texts, params, stage))


def _classified(texts, params: ChatParams, stage: str) -> text_safety.TextCheck:
    """The text classifier's check of `texts`, noted for the answer's `content_policy.checks`."""
    check = text_safety.check_text(state().settings, texts, tier=_tier(params), stage=stage)
    g.setdefault("content_checks", []).append(check.public())
    return check


def _policy_used(params: ChatParams) -> dict:
    """The tier the request was held to, next to the caller's own reason for asking nsfw (echoed, never logged)."""
    reason = params["policy"]["nsfw_reason"]
    return {"tier": _tier(params), **({"nsfw_reason": reason} if reason is not None else {}),
            "checks": list(g.get("content_checks", []))}


def _reply(params: ChatParams, result: GenerationResult) -> tuple[str, str]:
    """(text, finish_reason) as sent: the model's, or the refusal text when the reply crossed the policy."""
    decision = policy.check_text(result.text, tier=_tier(params), stage="chat_output")
    if decision.allowed:
        classified = _classified(result.text, params, "chat_output")
        if not classified.flagged:
            return result.text, result.finish_reason
        decision = classified.decision()
    return policy.refusal_text(decision.category or policy.EXPLICIT), "content_filter"


def _used(params: ChatParams) -> dict:
    values: dict = dict(params)
    return {name: values[name] for name in _PARAMETERS}


def _model_info(params: ChatParams, result: GenerationResult) -> dict:
    return {**_engine().model_info(params["model"]), "batch_size": result.batch_size}


def _request(schema: str) -> Any:
    """The body as its validated request model (configuration/requests/chat.py; null means absent)."""
    return requests.check(f"chat.{schema}", json_body(), state().settings)


# ---- enhancement ---------------------------------------------------------------------------------

def _enhance(params: ChatParams):
    result = _run(params)
    enhanced = clean_enhancement(result.text, params["original_prompt"], result.special_tokens,
                                 chat_config()["cleaning"]["quote_pairs"])
    if not enhanced:
        raise ApiError(422, EMPTY_ENHANCEMENT,
                       f"the model produced no enhancement (finish_reason {result.finish_reason}, "
                       f"{result.completion_tokens} tokens): its output was empty or only the original prompt",
                       [{"path": "", "message": "retry with other sampling parameters or another seed"}])
    # An enhancement that crosses the policy is never returned (it would become a generation prompt).
    policy.require(policy.check_text(enhanced, tier=_tier(params), stage="enhance_output"))
    text_safety.require(_classified(enhanced, params, "enhance_output"))
    return jsonify({
        "success": True,
        "enhanced_prompt": enhanced,
        "original_prompt": params["original_prompt"],
        "model": short_name(params["model"]),
        "tokens_generated": result.completion_tokens,
        "prompt_tokens": result.prompt_tokens,
        "generation_time": round(result.generation_time, 4),
        "queue_time": round(result.queue_time, 4),
        "finish_reason": result.finish_reason,
        "target_model": params["target_model"],
        "raw": params["text"] is not None,
        "content_policy": _policy_used(params),
        "parameters": _used(params),
        "model_info": _model_info(params, result),
    })


@bp.post("/enhance/<short>")
def enhance_with(short: str):
    try:
        model = model_for_short_name(short)
    except KeyError:
        raise ApiError(404, NOT_FOUND, f"no model {short!r}; use /enhance/base or /enhance/instruct") from None
    return _enhance(_request("enhance").to_params(state().settings, model))


@bp.post("/enhance")
def enhance_legacy():
    return _enhance(_request("enhance_legacy").to_params(state().settings))


# ---- legacy chat ---------------------------------------------------------------------------------

def _chat():
    params = _request("chat").to_params(state().settings)
    result = _run(params)
    text, finish_reason = _reply(params, result)
    return jsonify({
        "success": True,
        "response": text,
        "model": params["model"],
        "tokens_generated": result.completion_tokens,
        "prompt_tokens": result.prompt_tokens,
        "generation_time": round(result.generation_time, 4),
        "queue_time": round(result.queue_time, 4),
        "finish_reason": finish_reason,
        "content_policy": _policy_used(params),
        "parameters": _used(params),
        "model_info": _model_info(params, result),
    })


bp.add_url_rule("/chat", "chat", _chat, methods=["POST"])
bp.add_url_rule("/generate", "generate", _chat, methods=["POST"])


# ---- OpenAI-compatible ---------------------------------------------------------------------------

@bp.get("/v1/models")
def openai_models():
    return jsonify({"object": "list", "data": [
        {"id": model, "object": "model", "created": _STARTED_AT, "owned_by": "ourvidz"}
        for model in _engine().model_names()]})


def _usage(result: GenerationResult) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


@bp.post("/v1/chat/completions")
def openai_chat_completions():
    params = _request("completions").to_params(state().settings)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    head = {"id": completion_id, "created": created, "model": params["model"],
            "system_fingerprint": f"{params['model']}-{state().settings.model_profile}"}
    if params["stream"]:
        return _stream(params, head)
    result = _run(params)
    text, finish_reason = _reply(params, result)
    return jsonify({
        **head, "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason, "logprobs": None}],
        "usage": _usage(result),
        "seed": params["seed"],
    })


def _sse(payload) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _stream(params: ChatParams, head: dict) -> Response:
    generation = _submit(params)
    kind, payload = generation.next_event()  # errors before the first token are plain JSON errors
    if kind == "error":
        raise _api_error(payload)

    def chunk(delta: dict, finish_reason=None) -> str:
        return _sse({**head, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]})

    # Only whole words that passed the policy are sent; a reply that crosses it ends with the refusal.
    guard = policy.StreamGuard(_tier(params), "chat_output")
    settings, tier, sent = state().settings, _tier(params), []

    def refused(category: str | None = None):
        decision = guard.decision
        category = category or (decision.category if decision and decision.category else policy.EXPLICIT)
        yield chunk({"content": policy.refusal_text(category)})
        yield chunk({}, "content_filter")
        yield "data: [DONE]\n\n"

    def events():
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                kind, payload = generation.next_event()
                if kind == "delta":
                    released = guard.feed(str(payload))
                    if released is None:
                        yield from refused()
                        return
                    if released:
                        sent.append(released)
                        yield chunk({"content": released})
                elif kind == "done":
                    result = cast(GenerationResult, payload)
                    rest = guard.finish()
                    if rest is None:
                        yield from refused()
                        return
                    # The classifier reads the whole reply once it is complete: what it flags ends the stream
                    # with the refusal (the words before were sent; only the rules can stop a word earlier).
                    classified = text_safety.check_text(settings, "".join(sent) + rest, tier=tier,
                                                        stage="chat_output")
                    if classified.flagged:
                        yield from refused(classified.category)
                        return
                    if rest:
                        yield chunk({"content": rest})
                    yield chunk({}, result.finish_reason)
                    if params["include_usage"]:
                        yield _sse({**head, "object": "chat.completion.chunk", "choices": [],
                                    "usage": _usage(result)})
                    yield "data: [DONE]\n\n"
                    return
                elif kind == "error":
                    error = _api_error(payload)
                    body = ({"code": error.code, "message": error.message, "details": error.details}
                            if isinstance(error, ApiError) else
                            {"code": VALIDATION_ERROR, "message": str(error), "details": error.details})
                    yield _sse({"error": body})
                    return
        finally:
            generation.cancel()  # the client went away (or the stream ended): stop generating for it

    return Response(events(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# What /openapi.json describes for the chat worker.
_REFUSALS = (400, 401, 409, 413, 422, 503)
ROUTES: RouteTable = {
    "/enhance/base": {"post": ("Enhance a prompt with the base model (system prompt from the caller).", "chat.enhance",
                               _REFUSALS)},
    "/enhance/instruct": {"post": ("Enhance a prompt with the instruct model.", "chat.enhance", _REFUSALS)},
    "/enhance": {"post": ("Legacy enhancement; `model`: qwen_base | qwen_instruct.", "chat.enhance_legacy",
                          _REFUSALS)},
    "/chat": {"post": ("Chat: `messages` -> `response`.", "chat.chat", _REFUSALS)},
    "/generate": {"post": ("Legacy alias of /chat.", "chat.chat", _REFUSALS)},
    "/v1/chat/completions": {"post": ("OpenAI-compatible chat completion; `stream: true` answers server-sent events "
                                      "ending with `data: [DONE]`.", "chat.completions", _REFUSALS)},
    "/v1/models": {"get": ("OpenAI-compatible model list.", None, (401,))},
}
