"""Orchestrator request schemas: routed jobs, operator memory actions, and the memory broker's calls.

`jobs` checks the routing envelope only (`target`, `enhance`, the legacy `config.enhance_prompt`);
the rest of the body is the target worker's `/generate` body and is validated by that worker's schema
(`sdxl.generate`, `wan.generate`) before anything runs. The `enhance` object takes the chat worker's
own enhancement parameters (configuration/schemas/chat.py) plus the model.
"""
from __future__ import annotations

from configuration import chat_config, job_types, worker_configs
from configuration.schemas.common import CONTENT_TIER, DIALECT, END, PROMPT, SAFE_ID
from configuration.settings import Settings

_NAME = {"type": "string", "pattern": "^[a-z0-9_]{1,64}" + END}
_BYTES = {"type": "integer", "minimum": 0, "maximum": 2**50}
_ENHANCE_FROM_CHAT = ("system_prompt", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop",
                      "seed")


def _generation_workers() -> list[str]:
    return sorted({entry["worker"] for entry in job_types().values()})


def _broker(title: str, required: list[str], **properties: dict) -> dict:
    return {"$schema": DIALECT, "title": f"Memory broker: {title}", "type": "object", "additionalProperties": False,
            "required": ["worker", *required], "properties": {"worker": _NAME, **properties}}


def schemas(settings: Settings) -> dict[str, dict]:
    from configuration.schemas import chat as chat_schemas

    chat_enhance = chat_schemas.schemas(settings)["enhance"]["properties"]
    short_names = sorted(m["short_name"] for m in chat_config()["models"].values())
    enhance = {
        "type": "object", "additionalProperties": False,
        "description": "Enhance the prompt on the chat worker first; the generation uses the enhanced prompt. "
                       "Parameters are the chat worker's /enhance/<model> parameters.",
        "properties": {"model": {"enum": short_names, "description": "Chat model (default: the chat worker's legacy "
                                                                     "default)."},
                       **{k: chat_enhance[k] for k in _ENHANCE_FROM_CHAT}},
    }
    jobs = {
        "$schema": DIALECT,
        "title": "Routed generation job",
        "description": "A generation body of the target worker's POST /generate (validated by that worker's schema), "
                       "plus `target` and `enhance`.",
        "type": "object",
        "required": ["type", "prompt"],
        "properties": {
            "id": SAFE_ID,
            "type": {"enum": sorted(job_types())},
            "prompt": PROMPT,
            "user_id": SAFE_ID,
            "content_tier": CONTENT_TIER,
            "target": {"enum": _generation_workers(), "description": "Inferred from `type` when absent; must agree "
                                                                     "with it."},
            "enhance": enhance,
            "config": {"type": "object", "properties": {
                "enhance_prompt": {"type": "boolean", "description": "Legacy: true asks for enhancement with default "
                                                                     "parameters."}}},
            "metadata": {"type": "object"},
        },
    }
    memory_action = {
        "$schema": DIALECT, "title": "Load/unload a worker's models", "type": "object", "additionalProperties": False,
        "required": ["worker"],
        "properties": {"worker": {"enum": sorted(worker_configs())},
                       "which": {"type": "string", "minLength": 1, "maxLength": 64,
                                 "description": "A model of that worker or `all` (default)."},
                       "wait_s": {"type": "number", "minimum": 0, "maximum": 600,
                                  "description": "Unload only: how long to wait for a running job."}},
    }
    model = {"type": "string", "minLength": 1, "maxLength": 64}
    return {
        "jobs": jobs,
        "memory_action": memory_action,
        "broker_hello": _broker("a worker process started", ["pid"], pid={"type": "integer", "minimum": 1}),
        "broker_acquire": _broker("lease memory before loading a model", ["model", "estimate_bytes"], model=model,
                                  estimate_bytes=_BYTES, working_bytes=_BYTES),
        "broker_admit": _broker("could a job of this size ever fit", ["need_bytes"], need_bytes=_BYTES),
        "broker_loaded": _broker("a model is loaded; its measured size", ["model", "resident_bytes"], model=model,
                                 resident_bytes=_BYTES),
        "broker_release": _broker("a model was unloaded", ["model"], model=model),
        "broker_job_started": _broker("a job starts; its working memory", [], working_bytes=_BYTES),
        "broker_working": _broker("a running job needs more working memory", ["working_bytes"], working_bytes=_BYTES),
        "broker_job_finished": _broker("a job ended", []),
        "broker_touch": _broker("models were used", ["models"], models={"type": "array", "items": model,
                                                                        "maxItems": 16}),
        "broker_turn": _broker("a job is about to start on these models", ["models"],
                               models={"type": "array", "items": model, "maxItems": 16}),
    }
